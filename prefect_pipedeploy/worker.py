"""The `pipedeploy` worker: finds the runs of a work pool and starts each where its mode says.

For: picking up flow runs within a second of their creation (Prefect events wake the worker,
polling is the fallback), starting elastic runs as fresh processes and reporting how they
ended, and keeping the pool's base job template in step with the deployment spec.
Not for: the order of queued runs (`ordering.py`), RAM bookkeeping (`admission.py`), or running
the flow itself (`execution.py`).

    prefect worker start --type pipedeploy --pool pipedeploy
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed, Pending
from prefect.utilities.engine import propose_state
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import Field

from prefect_pipedeploy.ordering import WaitingRun, runs_to_start
from prefect_pipedeploy.pods import PodSupervisor
from prefect_pipedeploy.runtimes.process import start_process, wait_process
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import DeploymentSpec, Mode

if TYPE_CHECKING:
    from prefect.client.schemas.responses import DeploymentResponse


class PipeDeployJobConfiguration(BaseJobConfiguration, DeploymentSpec):
    """What one run needs: the deployment spec (from the job variables) plus Prefect's basics."""

    working_dir: Path | None = Field(
        default=None, description="Directory the run starts in; a fresh temporary one if empty."
    )


class PipeDeployVariables(BaseVariables, DeploymentSpec):
    """The settings a user may set per deployment: the form the Prefect UI shows for the pool."""

    working_dir: Path | None = Field(
        default=None,
        title="Working Directory",
        description="Directory the run starts in; a fresh temporary one if empty.",
    )


class PipeDeployWorkerResult(BaseWorkerResult):
    """How the infrastructure of one run ended (status_code 0: it reported its own state)."""


class PipeDeployWorker(
    BaseWorker[PipeDeployJobConfiguration, PipeDeployVariables, PipeDeployWorkerResult]
):
    type = "pipedeploy"
    job_configuration = PipeDeployJobConfiguration
    job_configuration_variables = PipeDeployVariables
    _description = (
        "Runs ML pipeline deployments: elastic runs as fresh processes, low-latency "
        "deployments in warm pods, within the machine's RAM."
    )
    _display_name = "PipeDeploy"
    _documentation_url = "https://github.com/prefect-pipedeploy/prefect-pipedeploy"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wake = anyio.Event()
        self.pods = PodSupervisor(
            client=get_client,
            worker_name=self.name,
            state_dir=get_settings().home.resolve() / "worker" / self.get_name_slug(),
            on_change=self.wake,
        )

    async def teardown(self, *exc_info: Any) -> None:
        await self.pods.stop_all()
        await super().teardown(*exc_info)

    # ---- loops ------------------------------------------------------------------------------

    async def start(
        self,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Any = print,
    ) -> None:
        """Run the worker: sync with the API, listen for events, submit runs as they come."""
        async with self:
            if run_once:
                await self._sync_and_initialize()
                await self.get_and_submit_flow_runs()
                return
            async with anyio.create_task_group() as loops:
                loops.start_soon(self._sync_loop)
                loops.start_soon(self._listen_for_runs)
                loops.start_soon(self._submit_loop)
                loops.start_soon(self._pod_loop)
                self._started_event = await self._emit_worker_started_event()
                printer(f"Worker {self.name!r} started!")

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self._sync_and_initialize()
            except Exception as exc:
                self._logger.warning("Could not sync with the Prefect API: %s", exc)
            await anyio.sleep(self.heartbeat_interval_seconds)

    async def _submit_loop(self) -> None:
        poll_s = get_settings().poll_seconds
        while True:
            with anyio.move_on_after(poll_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.get_and_submit_flow_runs()
            except Exception as exc:
                self._logger.warning("Could not fetch scheduled runs: %s", exc)
                await anyio.sleep(1)

    async def _pod_loop(self) -> None:
        """Keep one pod per low-latency deployment of the pool (started before any trigger)."""
        poll_s = get_settings().poll_seconds
        while True:
            if self._has_successfully_synced:
                try:
                    deployments = await self.client.read_deployments(
                        work_pool_filter=WorkPoolFilter(
                            name=WorkPoolFilterName(any_=[self._work_pool_name])
                        ),
                        limit=200,
                    )
                    await self.pods.reconcile(deployments)
                except Exception as exc:
                    self._logger.warning("Could not reconcile pods: %s", exc)
            await anyio.sleep(poll_s)

    def wake(self) -> None:
        """Look for runs now instead of at the next poll."""
        self._wake.set()

    async def _listen_for_runs(self) -> None:
        """Wake the submit loop on every flow-run event of this pool (a new run, a finished one)."""
        while self._work_pool is None:
            await anyio.sleep(0.2)
        event_filter = EventFilter(
            event=EventNameFilter(prefix=["prefect.flow-run."]),
            related=EventRelatedFilter(id=[f"prefect.work-pool.{self._work_pool.id}"]),
        )
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    async for _event in subscriber:
                        self.wake()
            except Exception as exc:  # the poll keeps working meanwhile
                self._logger.debug("Event subscription ended (%s); reconnecting", exc)
                await anyio.sleep(2)

    # ---- choosing runs ----------------------------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        if not self._has_successfully_synced:
            return []
        responses = await self._get_scheduled_flow_runs()
        self._last_polled_time = datetime.datetime.now(datetime.timezone.utc)
        deployments: dict[UUID, DeploymentResponse | None] = {}
        elastic: list[Any] = []
        low_latency: dict[UUID, list[FlowRun]] = {}
        for response in responses:
            flow_run = response.flow_run
            if flow_run.id in self._submitting_flow_run_ids or flow_run.deployment_id is None:
                continue
            if flow_run.deployment_id in self.pods.pods:
                low_latency.setdefault(flow_run.deployment_id, []).append(flow_run)
                continue
            if flow_run.deployment_id not in deployments:
                deployments[flow_run.deployment_id] = await self._read_deployment(
                    flow_run.deployment_id
                )
            deployment = deployments[flow_run.deployment_id]
            mode = (deployment.job_variables or {}).get("mode") if deployment else None
            if mode == Mode.elastic.value:
                elastic.append(response)
            # a low-latency run whose pod is not known yet waits for the pod loop
        for deployment_id, flow_runs in low_latency.items():
            await self._dispatch_to_pod(deployment_id, flow_runs)
        return await self._submit_scheduled_flow_runs(flow_run_response=elastic)

    async def _dispatch_to_pod(self, deployment_id: UUID, flow_runs: list[FlowRun]) -> None:
        """Start the heads of a deployment's queue in its pod, within its parallelism."""
        pod = self.pods.pods.get(deployment_id)
        if pod is None or pod.status != "up":
            return
        by_id = {run.id: run for run in flow_runs}
        waiting = [
            WaitingRun(
                id=str(run.id),
                expected_start=run.expected_start_time or run.created,
                created=run.created,
                attempt=run.run_count + 1,
            )
            for run in flow_runs
            if run.created is not None
        ]
        now = datetime.datetime.now(datetime.timezone.utc)
        for head in runs_to_start(waiting, len(pod.in_flight), pod.spec.parallelism, now=now):
            flow_run = by_id[UUID(head.id)]
            if await self._claim(flow_run):
                pod.send_run(flow_run)
                self._logger.debug("Run %s sent to the pod of %s", flow_run.id, pod.name)

    async def _claim(self, flow_run: FlowRun) -> bool:
        """Move a run to Pending; only one claimant succeeds, so no run executes twice."""
        try:
            state = await propose_state(self.client, Pending(), flow_run_id=flow_run.id)
        except Abort:
            return False
        except Exception as exc:
            self._logger.warning("Could not claim run %s: %s", flow_run.id, exc)
            return False
        return state.is_pending()

    async def _read_deployment(self, deployment_id: UUID) -> DeploymentResponse | None:
        try:
            return await self.client.read_deployment(deployment_id)
        except ObjectNotFound:
            return None

    # ---- running ----------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: PipeDeployJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> PipeDeployWorkerResult:
        """Run one elastic execution as a fresh process; returns when it has exited."""
        env = {**os.environ, **{k: v for k, v in configuration.env.items() if v is not None}}
        with _working_dir(configuration.working_dir) as cwd:
            process = await start_process(
                [sys.executable, "-m", "prefect_pipedeploy.execution", str(flow_run.id)],
                env=env,
                cwd=cwd,
            )
            if task_status is not None:
                task_status.started(process.pid)
            ended = await wait_process(process)
        if not ended.ok:
            await self._report_crash(flow_run, f"The execution's process {ended.explanation}.")
        return PipeDeployWorkerResult(identifier=str(process.pid), status_code=ended.exit_code)

    async def _report_crash(self, flow_run: FlowRun, message: str) -> None:
        self.get_flow_run_logger(flow_run).error(message)
        with contextlib.suppress(Abort, ObjectNotFound):
            await propose_state(self.client, Crashed(message=message), flow_run_id=flow_run.id)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: PipeDeployJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        from prefect_pipedeploy.runtimes.process import kill_process_tree

        kill_process_tree(int(infrastructure_pid))


@contextlib.contextmanager
def _working_dir(path: Path | None) -> Any:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pipedeploy-run-") as tmp:
        yield Path(tmp)
