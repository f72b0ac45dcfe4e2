"""What a dead worker of this machine left running: its executions and pods, taken in charge.

For: `Leftovers`, one per worker: `adopt` counts the RAM of the elastic processes and pods a dead
worker of the same API left running, watches them against their request until they end, then
frees it, removes the container one ran in, and ends a run that never said how it ended;
`end_runs_of_dead_orphans` ends the runs of orphaned pods that died before anyone adopted them
(`runtimes.orphans`). Not for: runs a dead worker claimed but never started (`recovery`), or its
pool-cap leases (`worker.ram`).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import TYPE_CHECKING
from uuid import UUID

from prefect_pipedeploy.admission import Holding, run_key
from prefect_pipedeploy.iomapping import remove_execution_dirs
from prefect_pipedeploy.prefect_api.runs import crash_run
from prefect_pipedeploy.runtimes.docker import container_of, remove_ended_container
from prefect_pipedeploy.runtimes.elastic import elastic_workdir_of
from prefect_pipedeploy.runtimes.orphans import (
    OrphanNote,
    end_orphaned_runs,
    put_back_orphan_note,
    take_orphan_notes,
)
from prefect_pipedeploy.runtimes.process import AdoptedProcess, orphaned_runtime_processes
from prefect_pipedeploy.spec import spec_from_job_variables

if TYPE_CHECKING:
    from prefect_pipedeploy.worker.worker import PipeDeployWorker


class Leftovers:
    """The processes one worker took in charge from dead workers, and how it ends them."""

    def __init__(self, worker: PipeDeployWorker) -> None:
        self.worker = worker
        self._watchers: set[asyncio.Task[None]] = set()  # one per adopted process

    async def adopt(self) -> None:
        """Executions and pods left running by a worker of this machine that died keep their
        RAM counted here until they end (and are watched against their request); an orphaned
        execution that ends without a final state is marked Crashed, saying so."""
        for pid, kind, ident in orphaned_runtime_processes(api_url=self.worker.api_url):
            try:
                if kind == "elastic":
                    flow_run = await self.worker.client.read_flow_run(UUID(ident))
                    deployment_id = flow_run.deployment_id
                    key = run_key(flow_run.id)
                else:
                    deployment_id, key = UUID(ident), f"orphan-pod:{pid}"
                deployment = (
                    await self.worker.read_deployment(deployment_id) if deployment_id else None
                )
                spec = spec_from_job_variables(deployment.job_variables if deployment else None)
            except Exception as exc:  # gone meanwhile, or not ours to know
                self.worker.worker_logger.debug("Not adopting process %s: %s", pid, exc)
                continue
            label = f"{kind} process {pid} of {deployment.name if deployment else 'a deleted deployment'}"
            self.worker.ledger.hold(Holding(key, spec.ram_request_mib, label))
            process = AdoptedProcess(pid)
            self.worker.rss.watch(
                key, process, spec.ram_request_mib, spec.ram_request, lambda _: None
            )
            self.worker.worker_logger.info(
                "Adopted the %s left by a worker that died", label, extra={"action": "adopted"}
            )
            watcher = asyncio.create_task(self._outlive(process, key, kind, ident))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)

    async def _outlive(self, process: AdoptedProcess, key: str, kind: str, ident: str) -> None:
        """Wait for an adopted process to end, then free its RAM, remove the temporary working
        directory its dead worker made for it and the container it ran in (only its dead worker
        would have: before, the ended container stayed until another worker started), and end
        its run if it did not say how it ended."""
        workdir = elastic_workdir_of(process.pid)
        container = await asyncio.to_thread(container_of, process.pid)
        await process.wait()
        self.worker.rss.unwatch(key)
        self.worker.ledger.release(key)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        if container is not None:
            removed = await asyncio.to_thread(remove_ended_container, container)
            if removed is not None:
                self.worker.worker_logger.info(
                    "Removed %s, left by a worker that died", removed, extra={"action": "swept"}
                )
        if kind == "elastic":
            remove_execution_dirs(ident)
            await crash_run(
                self.worker.client,
                UUID(ident),
                "The execution's process ended after the worker that started it died, without "
                "reporting how it ended",
            )
        else:  # a pod killed before it finished its runs left a note of them
            for note in take_orphan_notes(process.pid):
                await self._end_orphaned_runs(note)
        self.worker.wake()

    async def end_runs_of_dead_orphans(self) -> None:
        """End the runs of orphaned pods that died before anyone adopted them (or while their
        adopter was itself killed)."""
        for note in take_orphan_notes():
            await self._end_orphaned_runs(note)

    async def _end_orphaned_runs(self, note: OrphanNote) -> None:
        """End the runs a dead orphaned pod held (Crashed, with the reason, then retried if
        retries remain); before, they stayed Running for good, and a queue-mode deployment
        counted them active, so its later runs never started."""
        try:
            crashed = await end_orphaned_runs(self.worker.client, note)
        except Exception:
            put_back_orphan_note(note)
            raise
        self.worker.worker_logger.info(
            "Ended the executions of the orphaned pod %s of %s, which died: %s",
            note.pod_pid,
            note.deployment_name,
            ", ".join(map(str, note.runs)),
            extra={"action": "orphaned_pod_runs_ended"},
        )
        for flow_run_id in crashed:
            await self.worker.after_run(note.deployment_id, flow_run_id)
        self.worker.wake()
