"""A write that met a locked SQLite database, tried again within milliseconds.

For: `retry_busy` (one API call through the client, its 503s retried fast, then by Prefect's
client as usual). Not for: a server that is away (`runs.when_api_answers`), other status codes.

A SQLite Prefect server answers a write that meets a locked database with 503 (the transaction was
rolled back, so nothing was written): a write whose transaction read first and then found another
writer's commit since (SQLITE_BUSY_SNAPSHOT) is refused at once, without waiting. Prefect's client
then waits about 2 s before it tries again, 2, 4, 8, 16 and 32 s, five times: a burst of creates
crawls, and an update that reads a lot first (pausing a deployment deletes its scheduled runs) can
meet another commit on every one of the six tries of a busy server. `retry_busy` tries the call
again after a few milliseconds (the 503 raised at once, `_compat.busy_raised`: Prefect's client
sleeps about 2 s on a 503 even with its retries off), then, if the server is still busy, falls
back to the client's usual retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prefect.client.orchestration import PrefectClient

from prefect_pipedeploy._compat import ServerBusy, busy_raised

T = TypeVar("T")

#: Pauses before the quick tries; after them, Prefect's client retries as usual.
QUICK_RETRY_DELAYS_S = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5)


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
