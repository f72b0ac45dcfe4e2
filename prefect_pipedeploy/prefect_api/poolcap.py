"""The pool-wide RAM cap: one Prefect global concurrency limit in MiB, shared by a pool's workers.

For: `RamAdmission`, a worker's admission of pods and elastic runs: first against its own
capacity (`RamLedger`), then, when the pool has a cap, by taking a lease of `ram_request` slots
on the global concurrency limit `pipedeploy-ram-<pool>` (one slot = one MiB). The worker renews
its leases while the pod or run lives and releases them when it ends. The slots of a worker that
died come back when its leases expire (Prefect's repossessor, about a minute after the last
renewal), or at once when a worker starts on the same machine (it releases the leases that dead
workers recorded in their lease files). `read_pool_ram_cap` and `set_pool_ram_cap` read and
manage the limit; the Prefect UI shows it under Concurrency.
Not for: who goes first among waiting requests (`admission`), measuring RAM (`runtimes`).
"""

from __future__ import annotations

import contextlib
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger

from prefect_pipedeploy.exceptions import (
    SpecError,
)
from prefect_pipedeploy.sizes import format_mib

logger = get_logger("prefect_pipedeploy.prefect_api.poolcap")


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


def holder_of(key: str) -> ConcurrencyLeaseHolder:
    """Who a lease is for, as Prefect records it: the deployment of a pod, or the flow run."""
    kind, _, ident = key.partition(":")
    return ConcurrencyLeaseHolder(
        type="deployment" if kind == "pod" else "flow_run", id=UUID(ident)
    )
