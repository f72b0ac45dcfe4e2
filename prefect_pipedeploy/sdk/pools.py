"""The SDK's work-pool verbs, as a mixin of `PipeDeploy`: the pool-wide RAM cap.

For: `set_pool_ram_cap` and `get_pool_ram_cap`, the optional cap on the RAM that all workers
of a pool may hand out together (a Prefect global concurrency limit in MiB, see `prefect_api.poolcap`).
Each verb has an async core and a thin sync twin, and returns a plain dict (or None).
Not for: admission itself (the worker does it), or a single worker's capacity (`--ram-capacity`).

    from prefect_pipedeploy import PipeDeploy
    pd = PipeDeploy()
    pd.set_pool_ram_cap("16GiB")     # all workers of the pool together hold at most 16GiB
    pd.get_pool_ram_cap()            # {"ram_cap": "16GiB", "held": "1.5GiB", ...}
    pd.set_pool_ram_cap(None)        # no cap: each worker's own capacity only
"""

from __future__ import annotations

from typing import Any

from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy.prefect_api.poolcap import (
    cap_view,
    read_pool_ram_cap,
    set_pool_ram_cap,
)
from prefect_pipedeploy.sdk.base import Verbs
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.sizes import parse_ram


class PoolVerbs(Verbs):
    """Pool verbs; mixed into `PipeDeploy`."""

    def _pool(self, work_pool_name: str | None) -> str:
        return work_pool_name or self.work_pool_name or get_settings().default_pool

    async def aset_pool_ram_cap(
        self, ram_cap: str | None, work_pool_name: str | None = None
    ) -> dict[str, Any] | None:
        """Cap the RAM all workers of the pool hold together ("16GiB"); None removes the cap.

        Returns what `get_pool_ram_cap` returns. Lowering the cap below what is held stops
        nothing: new pods and runs wait until they fit.
        """
        pool = self._pool(work_pool_name)
        mib = None if ram_cap is None else parse_ram(ram_cap, "ram_cap")
        async with self._client() as client:
            await set_pool_ram_cap(client, pool, mib)
            return cap_view(pool, await read_pool_ram_cap(client, pool))

    async def aget_pool_ram_cap(self, work_pool_name: str | None = None) -> dict[str, Any] | None:
        """The pool's RAM cap and how much of it is held now, or None when it has none."""
        pool = self._pool(work_pool_name)
        async with self._client() as client:
            return cap_view(pool, await read_pool_ram_cap(client, pool))

    def set_pool_ram_cap(
        self, ram_cap: str | None, work_pool_name: str | None = None
    ) -> dict[str, Any] | None:
        return run_coro_as_sync(self.aset_pool_ram_cap(ram_cap, work_pool_name))

    def get_pool_ram_cap(self, work_pool_name: str | None = None) -> dict[str, Any] | None:
        return run_coro_as_sync(self.aget_pool_ram_cap(work_pool_name))
