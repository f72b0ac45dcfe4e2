"""RAM on a worker: admission against its capacity and the pool's cap, and the RSS watcher.

For: `RamAdmission` (a worker's admission of pods and elastic runs: first against its own
capacity, `admission.RamLedger`, then, when the pool has a cap, by taking a lease of
`ram_request` slots on the pool's global concurrency limit, one slot per MiB; the worker renews
its leases while the pod or run lives and releases them when it ends), the worker's capacity,
and the one loop that stops a process tree going over its RAM request.
Not for: who goes first among waiting requests (`admission`), the cap's API
(`prefect_api.poolcap`).

Leases live in the Prefect server. `pipedeploy up` and the tests start the server with
Prefect's file-based lease storage, so leases survive a server restart and the cap holds across
it. With Prefect's default in-memory lease storage a restarted server forgets the leases while
the limit keeps counting their slots: the worker re-takes what it holds under new leases when it
notices (a renewal refused) and logs that the old slots stay counted until the cap is removed and
set again. Pods and runs admitted while the pool had no cap are leased on a cap set later, so a
new cap counts what is already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import anyio
import httpx
import psutil
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.logging import get_logger

from prefect_pipedeploy._compat import lease_lost, lease_refused
from prefect_pipedeploy.admission import (
    AdmissionDecision,
    RamLedger,
    Request,
    behind,
    default_capacity_mib,
    starving,
)
from prefect_pipedeploy.prefect_api.poolcap import (
    LEASE_S,
    RENEW_EVERY_S,
    holder_of,
    limit_name,
    read_pool_ram_cap,
)
from prefect_pipedeploy.runtimes.base import RuntimeHandle
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.sizes import format_mib, parse_ram

logger = get_logger("prefect_pipedeploy.worker.ram")


@dataclass
class Lease:
    """What this worker holds for one pod or run against the pool's cap.

    `lease_id` is None while it holds no lease: the pool had no cap when it was admitted, or the
    cap was removed, or the server lost its lease and the cap had no room to take it again. The
    worker keeps trying (see `RamAdmission.renew_leases`), so a cap set later counts it too.
    """

    key: str
    mib: int
    lease_id: UUID | None = None
    limit_id: UUID | None = None


class RamAdmission:
    """A worker's RAM admission: its own capacity first, then the pool's cap when there is one.

    `decide` returns the same decisions as `RamLedger.decide`, except that a request the
    ledger admitted but the cap refuses waits (with the cap's reason) and holds nothing.
    `release` frees both. `renew_leases` runs for the worker's life.
    """

    def __init__(
        self,
        ledger: RamLedger,
        pool: str,
        client: Callable[[], PrefectClient],
        lease_dir: Path,
    ) -> None:
        self.ledger = ledger
        self.pool = pool
        self._client = client  # an open client (the worker's)
        self.leases: dict[str, Lease] = {}
        self._lease_dir = lease_dir
        self._lease_file = lease_dir / f"{os.getpid()}.json"
        self._releases: set[asyncio.Task[None]] = set()
        self._outside_cap: set[str] = set()  # keys already logged as running outside the cap

    # ---- admission --------------------------------------------------------------------------

    async def decide(
        self, requests: Sequence[Request], now: datetime.datetime
    ) -> list[AdmissionDecision]:
        decisions = self.ledger.decide(requests, now)
        wants_cap = [
            request
            for request, decision in zip(requests, decisions, strict=True)
            if decision.admitted and request.mib
        ]
        if not wants_cap:
            return decisions
        try:
            refused = await self._within_cap(wants_cap, now)
        except BaseException:
            # The API failed (e.g. 503s past every retry): the caller gets no decision, so
            # nothing of this round may stay held. Before, the ledger kept the requests it had
            # admitted and the leases already taken: RAM held for runs that never started,
            # which starved every later run of the pool for good (CI, three workers).
            with anyio.CancelScope(shield=True):
                for request in wants_cap:
                    await self.release(request.key)
            raise
        self._record()
        return [refused.get(d.key, d) for d in decisions]

    async def _within_cap(
        self, wants_cap: Sequence[Request], now: datetime.datetime
    ) -> dict[str, AdmissionDecision]:
        """Take the cap's leases of the requests the ledger admitted; the refused ones."""
        cap = await read_pool_ram_cap(self._client(), self.pool)
        refused: dict[str, AdmissionDecision] = {}
        blocker: Request | None = None
        for request in wants_cap:
            if cap is None:
                self.leases[request.key] = Lease(request.key, request.mib)
                continue
            reason = (
                behind(blocker, now, of="the pool's RAM cap")
                if blocker is not None
                else await self._take(request, cap)
            )
            if reason is None:
                continue
            self.ledger.release(request.key)
            refused[request.key] = AdmissionDecision(request.key, False, reason)
            if blocker is None and starving(request, now):
                blocker = request
        return refused

    async def _take(self, request: Request, cap: GlobalConcurrencyLimitResponse) -> str | None:
        """Take a lease of the request's MiB on the cap; None when taken, else why it waits."""
        if request.mib > cap.limit:
            return (
                f"can never start: it needs {format_mib(request.mib)} of RAM and the pool's RAM "
                f"cap is {format_mib(cap.limit)}; lower ram_request or raise the cap"
            )
        lease = Lease(request.key, request.mib)
        if not await self._lease(lease):
            # the cap as it is now: what this and other workers took since it was read
            cap = await read_pool_ram_cap(self._client(), self.pool) or cap
            held = format_mib(cap.active_slots)
            return (
                f"waiting for {format_mib(request.mib)} of RAM: {held} of the pool's RAM cap of "
                f"{format_mib(cap.limit)} held across its workers (global concurrency limit "
                f"{cap.name!r})"
            )
        self.leases[request.key] = lease
        return None

    async def _lease(self, lease: Lease) -> bool:
        """Give `lease` a new lease of its MiB on the cap; False when the cap has no room."""
        try:
            response = await self._client().increment_concurrency_slots_with_lease(
                names=[limit_name(self.pool)],
                slots=lease.mib,
                mode="concurrency",
                lease_duration=LEASE_S,
                holder=holder_of(lease.key),
            )
        except httpx.HTTPStatusError as exc:
            if lease_refused(exc):
                return False
            raise
        body = response.json()
        if not body["limits"]:  # the cap was removed meanwhile
            return True
        lease.lease_id = UUID(body["lease_id"])
        lease.limit_id = UUID(body["limits"][0]["id"])
        return True

    # ---- release ------------------------------------------------------------------------------

    async def release(self, key: str) -> None:
        """Free what `key` holds: its share of the worker's capacity and its lease on the cap."""
        self.ledger.release(key)
        lease = self.leases.pop(key, None)
        self._outside_cap.discard(key)
        if lease is None:
            return
        self._record()
        await self._give_back(lease)

    async def _give_back(self, lease: Lease) -> None:
        if lease.lease_id is None:
            return
        lease_id, lease.lease_id, lease.limit_id = lease.lease_id, None, None
        try:
            await self._client().release_concurrency_slots_with_lease(lease_id)
        except Exception as exc:  # the lease expires on its own within LEASE_S
            logger.warning("Could not release RAM cap lease of %s (%s); it expires", lease.key, exc)

    def release_soon(self, key: str, then: Callable[[], None]) -> None:
        """`release` from synchronous code in the worker's event loop; `then` runs after it."""
        if key not in self.leases:
            if key in self.ledger.holdings:
                self.ledger.release(key)
                then()
            return
        task = asyncio.get_running_loop().create_task(self.release(key))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        task.add_done_callback(lambda _: then())

    # ---- leases over time ---------------------------------------------------------------------

    async def renew_leases(self) -> None:
        """Keep every holding leased on the pool's current cap, for the worker's whole life."""
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            if not self.leases:
                continue
            try:
                await self.renew_once()
            except Exception as exc:  # the next round tries again
                logger.warning("Could not renew the RAM cap leases of pool %s: %s", self.pool, exc)

    async def renew_once(self) -> None:
        """Renew each lease; take one for a holding without (or on a cap since replaced)."""
        cap = await read_pool_ram_cap(self._client(), self.pool)
        for lease in list(self.leases.values()):
            if cap is None:  # no cap (any more): nothing to hold against
                await self._give_back(lease)
                continue
            if lease.lease_id is not None and lease.limit_id == cap.id:
                try:
                    await self._client().renew_concurrency_lease(lease.lease_id, LEASE_S)
                    continue
                except httpx.HTTPStatusError as exc:
                    if not lease_lost(exc):
                        raise
                    logger.warning(
                        "The Prefect server lost the RAM cap lease of %s (it expired, or the "
                        "server restarted with in-memory lease storage: then its old slots stay "
                        "counted until the cap is removed and set again); taking a new one",
                        lease.key,
                    )
                    lease.lease_id = None
            else:
                await self._give_back(lease)  # a lease on a cap that was replaced
            await self._retake(lease)
        self._record()

    async def _retake(self, lease: Lease) -> None:
        if not await self._lease(lease):
            if lease.key not in self._outside_cap:
                self._outside_cap.add(lease.key)
                logger.warning(
                    "%s holds %s outside the pool's RAM cap: the cap has no room for it now; "
                    "it is taken as soon as there is",
                    lease.key,
                    format_mib(lease.mib),
                )
            return
        self._outside_cap.discard(lease.key)
        if self.leases.get(lease.key) is not lease:  # released meanwhile
            await self._give_back(lease)

    def _record(self) -> None:
        """Write this worker's leases down, for `release_dead_leases` after a crash."""
        leases = {k: str(v.lease_id) for k, v in self.leases.items() if v.lease_id is not None}
        if not leases:
            self._lease_file.unlink(missing_ok=True)
            return
        self._lease_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._lease_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pool": self.pool, "leases": leases}))
        tmp.replace(self._lease_file)

    async def release_dead_leases(self) -> int:
        """Release the leases recorded by workers of this machine whose process is gone."""
        released = 0
        for path in sorted(self._lease_dir.glob("*.json")):
            pid = int(path.stem) if path.stem.isdigit() else 0
            if pid == os.getpid() or (pid and psutil.pid_exists(pid)):
                continue
            try:
                recorded = json.loads(path.read_text())["leases"]
            except (OSError, ValueError, KeyError):
                recorded = {}
            for key, lease_id in recorded.items():
                with contextlib.suppress(Exception):
                    await self._client().release_concurrency_slots_with_lease(UUID(lease_id))
                    released += 1
                    logger.info("Released RAM cap lease of %s left by a dead worker", key)
            path.unlink(missing_ok=True)
        return released


def ram_exceeded(ram_request: str, peak_mib: float) -> str:
    """The words for a process stopped for going over its RAM request."""
    return (
        f"exceeded its RAM request of {ram_request} (peak {format_mib(round(peak_mib))}) and "
        "was stopped like an out-of-memory kill; raise ram_request or lower the batch size"
    )


@dataclass
class _Watched:
    handle: RuntimeHandle
    limit_mib: int
    ram_request: str
    on_exceeded: Callable[[str], None]
    peak_mib: float = 0.0


class RssWatcher:
    """The one loop that stops a process going over its RAM request, like an OOM kill.

    Every `interval_s` it measures each watched process with everything it started; one over
    its limit is killed (SIGKILL) and `on_exceeded` gets the words for it (`ram_exceeded`).
    Elastic runs and pods are watched the same way. A spike shorter than the interval can pass.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._watched: dict[str, _Watched] = {}

    def watch(
        self,
        key: str,
        handle: RuntimeHandle,
        limit_mib: int,
        ram_request: str,
        on_exceeded: Callable[[str], None],
    ) -> None:
        """Watch `handle` under `key` (a holding key) until `unwatch(key)`."""
        self._watched[key] = _Watched(handle, limit_mib, ram_request, on_exceeded)

    def unwatch(self, key: str) -> float:
        """Stop watching `key`; returns the peak RSS seen, in MiB."""
        watched = self._watched.pop(key, None)
        return watched.peak_mib if watched is not None else 0.0

    def check_once(self) -> None:
        for key, watched in list(self._watched.items()):
            rss = watched.handle.rss_mib()
            watched.peak_mib = max(watched.peak_mib, rss)
            if rss > watched.limit_mib:
                self._watched.pop(key, None)
                watched.handle.signal(signal.SIGKILL)
                watched.on_exceeded(ram_exceeded(watched.ram_request, watched.peak_mib))

    async def run(self) -> None:
        """Watch for the worker's whole life."""
        while True:
            self.check_once()
            await asyncio.sleep(self.interval_s)


def worker_ram_capacity_mib(ram_capacity: str | None = None) -> int:
    """The RAM this worker hands out: `ram_capacity` (the worker's `--ram-capacity`), else the
    `ram_capacity` setting, else total memory minus the `ram_reserve` setting."""
    settings = get_settings()
    ram_capacity = ram_capacity or settings.ram_capacity
    if ram_capacity:
        return parse_ram(ram_capacity, "ram_capacity")
    total_mib = psutil.virtual_memory().total // 1024**2
    return default_capacity_mib(total_mib, parse_ram(settings.ram_reserve, "ram_reserve"))
