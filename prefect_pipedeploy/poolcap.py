"""The pool-wide RAM cap: one Prefect global concurrency limit in MiB, shared by a pool's workers.

For: `RamAdmission`, a worker's admission of pods and elastic runs: first against its own
capacity (`RamLedger`), then, when the pool has a cap, by taking a lease of `ram_request` slots
on the global concurrency limit `pipedeploy-ram-<pool>` (one slot = one MiB). The worker renews
its leases while the pod or run lives and releases them when it ends. The slots of a worker that
died come back when its leases expire (Prefect's repossessor, about a minute after the last
renewal), or at once when a worker starts on the same machine (it releases the leases that dead
workers recorded in their lease files). `read_pool_ram_cap` and `set_pool_ram_cap` read and
manage the limit; the Prefect UI shows it under Concurrency.
Not for: who goes first among waiting requests (`admission.py`), measuring RAM (`runtimes`).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psutil
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger

from prefect_pipedeploy.admission import (
    AdmissionDecision,
    RamLedger,
    Request,
    behind,
    starving,
)
from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.spec import format_mib

logger = get_logger("prefect_pipedeploy.poolcap")

LIMIT_PREFIX = "pipedeploy-ram-"
#: Prefect's shortest lease; renewed every `RENEW_EVERY_S`, so a dead worker's slots come back
#: about a minute after it died.
LEASE_S = 60.0
RENEW_EVERY_S = 15.0
#: The server's file-based lease storage (leases survive a restart), for servers we start.
FILE_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def limit_name(pool: str) -> str:
    """The global concurrency limit that holds the RAM cap of `pool`."""
    return f"{LIMIT_PREFIX}{pool}"


async def read_pool_ram_cap(
    client: PrefectClient, pool: str
) -> GlobalConcurrencyLimitResponse | None:
    """The pool's cap, or None when it has none (or it is switched off in the UI)."""
    try:
        limit = await client.read_global_concurrency_limit_by_name(limit_name(pool))
    except ObjectNotFound:
        return None
    return limit if limit.active else None


async def set_pool_ram_cap(client: PrefectClient, pool: str, mib: int | None) -> None:
    """Set the pool's cap to `mib` MiB (creating its limit), or remove it with None.

    Lowering a cap below what is held stops nothing: new pods and runs wait until it fits.
    """
    name = limit_name(pool)
    if mib is None:
        with contextlib.suppress(ObjectNotFound):
            await client.delete_global_concurrency_limit_by_name(name)
        return
    if mib <= 0:
        raise SpecError(f"ram cap of pool {pool!r} must be more than 0; to remove it, unset it")
    try:
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=mib, active=True, slot_decay_per_second=0)
        )
    except ObjectNotFound:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=mib, slot_decay_per_second=0)
        )


def check_fits_cap(request_mib: int, cap: GlobalConcurrencyLimitResponse | None, what: str) -> None:
    """Refuse a RAM request larger than the pool's whole cap; it would wait forever."""
    if cap is not None and request_mib > cap.limit:
        raise SpecError(
            f"ram_request {format_mib(request_mib)} of {what} is larger than the pool's RAM cap "
            f"of {format_mib(cap.limit)} (global concurrency limit {cap.name!r}); lower "
            "ram_request or raise the cap with `pipedeploy pool ram-cap`"
        )


def cap_view(pool: str, cap: GlobalConcurrencyLimitResponse | None) -> dict[str, Any] | None:
    """The cap as the SDK shows it."""
    if cap is None:
        return None
    return {
        "work_pool_name": pool,
        "ram_cap": format_mib(cap.limit),
        "ram_cap_mib": cap.limit,
        "held": format_mib(cap.active_slots),
        "held_mib": cap.active_slots,
        "concurrency_limit": cap.name,
    }


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


def holder_of(key: str) -> ConcurrencyLeaseHolder:
    """Who a lease is for, as Prefect records it: the deployment of a pod, or the flow run."""
    kind, _, ident = key.partition(":")
    return ConcurrencyLeaseHolder(
        type="deployment" if kind == "pod" else "flow_run", id=UUID(ident)
    )


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
        self._record()
        return [refused.get(d.key, d) for d in decisions]

    async def _take(self, request: Request, cap: GlobalConcurrencyLimitResponse) -> str | None:
        """Take a lease of the request's MiB on the cap; None when taken, else why it waits."""
        if request.mib > cap.limit:
            return (
                f"can never start: it needs {format_mib(request.mib)} of RAM and the pool's RAM "
                f"cap is {format_mib(cap.limit)}; lower ram_request or raise the cap"
            )
        lease = Lease(request.key, request.mib)
        if not await self._lease(lease):
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
            if exc.response.status_code in (423, 422):  # 422: the cap was lowered meanwhile
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
                    if exc.response.status_code not in (404, 410):
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
