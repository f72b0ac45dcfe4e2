"""Upkeep: the worker's slow loop, every poll interval, beside the submit loop.

For: `Upkeep`, one per worker. It keeps one pod per low-latency deployment of the pool (started
before any trigger), publishes the worker's RAM capacity, deletes sealed secret values whose run
is gone, removes from the machine's code cache what no run used lately, and recovers what
others left: on its first round after the worker synced, the pool-cap slots, processes, work
directories and containers of dead workers of this machine (`leftovers`, `ram`, `runtimes`) and
the runs they claimed and never started (`recovery`); then, every RECOVERY_EVERY of
`pending_recovery_s`, runs left Pending again. Not for: choosing or starting runs (`worker`,
`dispatch`), nor cancels (`cancel`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import anyio

from prefect_pipedeploy.datastore.code import cache_root, evict_code
from prefect_pipedeploy.prefect_api.published import publish_capacity
from prefect_pipedeploy.prefect_api.sealed import sweep_sealed
from prefect_pipedeploy.runtimes.docker import remove_dead_workers_containers
from prefect_pipedeploy.runtimes.elastic import remove_dead_workers_workdirs
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.worker.recovery import recover_abandoned

if TYPE_CHECKING:
    from prefect_pipedeploy.worker.worker import PipeDeployWorker

#: How often a worker re-publishes its RAM capacity (readers drop entries older than 10 min).
CAPACITY_REFRESH_S = 60.0

#: How often a worker deletes sealed secret values whose run is gone (`sealed.sweep_sealed`).
SEALED_SWEEP_S = 600.0

#: How often a worker removes from the machine's code cache what no run used lately.
CODE_EVICTION_S = 3600.0

#: Runs left Pending are looked for again every this fraction of `pending_recovery_s`.
RECOVERY_EVERY = 0.5


class Upkeep:
    """The slow loop of one worker (`run`) and its first-round recovery (`recover`)."""

    def __init__(self, worker: PipeDeployWorker) -> None:
        self.worker = worker

    async def run(self) -> None:
        """Every poll interval: recover (first round, then now and then), reconcile the pods,
        publish the capacity, sweep sealed values; a failed step is logged and tried again on
        a later round."""
        worker = self.worker
        poll_s = get_settings().poll_seconds
        recovered = False
        capacity_published_at = -CAPACITY_REFRESH_S  # publish on the first round
        swept_at = time.monotonic()  # sweep after the first interval
        evicted_at = -CODE_EVICTION_S  # on the first round
        recovered_at = time.monotonic()
        while True:
            if worker.has_synced and not recovered:
                try:
                    await self.recover()
                    recovered = True
                except Exception as exc:
                    worker.worker_logger.warning("Could not look for abandoned runs: %s", exc)
            elif recovered and time.monotonic() - recovered_at > RECOVERY_EVERY * (
                get_settings().pending_recovery_s
            ):
                recovered_at = time.monotonic()
                try:  # runs a worker killed and restarted at once left Pending
                    await worker.leftovers.end_runs_of_dead_orphans()
                    if await self.recover_abandoned():
                        worker.wake()
                except Exception as exc:
                    worker.worker_logger.warning("Could not look for abandoned runs: %s", exc)
            if worker.has_synced:
                try:
                    await worker.reconcile_pods()
                    if time.monotonic() - capacity_published_at > CAPACITY_REFRESH_S:
                        await publish_capacity(
                            worker.client, worker.pool_name, worker.name, worker.ledger.capacity_mib
                        )
                        capacity_published_at = time.monotonic()
                    if time.monotonic() - swept_at > SEALED_SWEEP_S:
                        swept_at = time.monotonic()
                        await sweep_sealed(worker.client)
                    if time.monotonic() - evicted_at > CODE_EVICTION_S:
                        evicted_at = time.monotonic()
                        await self.evict_code()
                except Exception as exc:
                    worker.worker_logger.warning("Could not reconcile pods: %s", exc)
            await anyio.sleep(poll_s)

    async def evict_code(self) -> None:
        """Remove from the machine's code cache what no run used for `code_cache_retention_s`
        (`datastore.code.evict_code`), saying what."""
        retention_s = get_settings().code_cache_retention_s
        for folder in await asyncio.to_thread(evict_code, cache_root(), retention_s):
            self.worker.worker_logger.info(
                "Removed %s from the code cache: no run used it for %g s",
                folder,
                retention_s,
                extra={"action": "code_evicted"},
            )

    async def recover(self) -> None:
        """Give back the pool-cap slots of dead workers of this machine, take charge of the
        executions and pods they left running, remove the temporary working directories of
        their executions that ended meanwhile, and re-queue the runs they claimed but never
        started."""
        worker = self.worker
        await worker.admission.release_dead_leases()
        await worker.leftovers.adopt()
        await worker.leftovers.end_runs_of_dead_orphans()
        left = [w.name for w in remove_dead_workers_workdirs()]
        left += await asyncio.to_thread(remove_dead_workers_containers)
        for name in left:
            worker.worker_logger.info(
                "Removed %s, left by a worker that died", name, extra={"action": "swept"}
            )
        await self.recover_abandoned()
        worker.wake()

    async def recover_abandoned(self) -> int:
        """Re-queue the pool's runs left Pending by gone workers (`recover_abandoned`); never
        the worker's own held runs. (Before, the first-round look passed none as held: when it
        failed under load and ran again on a later round, the worker had claimed runs since,
        found its own claims older than `pending_recovery_s` and re-queued them, so an elastic
        run executed up to six times.)"""
        worker = self.worker
        return await recover_abandoned(
            worker.client,
            worker.pool_name,
            get_settings().pending_recovery_s,
            worker.worker_logger,
            held=worker.held_runs(),
            me=worker.claimer,
        )
