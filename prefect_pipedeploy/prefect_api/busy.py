"""A write that met a locked SQLite database, tried again within milliseconds.

For: `retry_busy` (one API call through the client, its 503s retried fast, then by Prefect's
client as usual) and `retry_busy_sooner` (every Prefect client of the process retries a 503
after `BUSY_RETRY_AFTER_S`, not 2, 4, 8, 16, 32 s). Not for: a server that is away (`runs.when_api_answers`), other status codes.

A SQLite Prefect server answers a write that meets a locked database with 503 (the transaction was
rolled back, so nothing was written): a write whose transaction read first and then found another
writer's commit since (SQLITE_BUSY_SNAPSHOT) is refused at once, without waiting. Prefect's client
then waits about 2 s before it tries again, 2, 4, 8, 16 and 32 s, five times: a burst of creates
crawls, and an update that reads a lot first (pausing a deployment deletes its scheduled runs) can
meet another commit on every one of the six tries of a busy server. `retry_busy` tries the call
again after a few milliseconds (the 503 raised at once, `_compat.busy_raised`: Prefect's client
sleeps about 2 s on a 503 even with its retries off), then, if the server is still busy, falls
back to the client's usual retries.

Every other call, the engine's state changes, logs and artifacts in pods and runners included,
gets Prefect's client's five retries, sooner: importing the package calls `retry_busy_sooner`,
which gives each 503 a `Retry-After` header the client obeys (`_compat.retry_busy_after`). A
pod's writes that met a commit of the gateway's no longer stall the pod for 2 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prefect.client.orchestration import PrefectClient

from prefect_pipedeploy._compat import ServerBusy, busy_raised, retry_busy_after

T = TypeVar("T")

#: Pauses before the quick tries; after them, Prefect's client retries as usual.
QUICK_RETRY_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5)


#: Prefect's client's pause before its 1st, 2nd, ... retry of a 503 (it makes five,
#: PREFECT_CLIENT_MAX_RETRIES): quick first, then as patient as Prefect's for a server that
#: stays busy (60.6 s in all; Prefect's 2, 4, 8, 16, 32 s make 62 s).
BUSY_RETRY_AFTER_S = (0.02, 0.1, 0.5, 8.0, 52.0)


def retry_busy_sooner() -> None:
    """Every Prefect client of this process (made from now on) retries a 503 after
    `BUSY_RETRY_AFTER_S`."""
    retry_busy_after(BUSY_RETRY_AFTER_S)


async def retry_busy(client: PrefectClient, call: Callable[[], Awaitable[T]]) -> T:
    """`await call()`, which makes one request through `client`; a 503 answer is retried after
    each of `QUICK_RETRY_DELAYS_S`, then the last try has Prefect's client retry as usual.
    What `call` raises otherwise passes through."""
    for delay_s in QUICK_RETRY_DELAYS_S:
        try:
            with busy_raised(client):
                return await call()
        except ServerBusy:
            pass
        await asyncio.sleep(delay_s)
    return await call()
