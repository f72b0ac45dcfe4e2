"""The `pipedeploy` worker: finds the runs of a work pool and starts each where its mode says.

For: picking up flow runs within a second of their creation (Prefect events wake the worker,
polling is the fallback), starting elastic runs as fresh processes and reporting how they
ended, and keeping the pool's base job template in step with the deployment spec.
Not for: the order of queued runs (`ordering`), RAM bookkeeping (`admission`, `worker.ram`), or running
the flow itself (`engine`).

    prefect worker start --type pipedeploy --pool pipedeploy
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.exceptions import Abort, ObjectNotFound
from prefect.states import Crashed, Pending, Scheduled
from prefect.utilities.engine import propose_state
from prefect.workers.base import (
    BaseWorker,
)

from prefect_pipedeploy.admission import RamLedger, Request
from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.ordering import WaitingRun, decide_retry, runs_to_start
from prefect_pipedeploy.runtimes.process import (
    start_process,
    wait_process,
)
from prefect_pipedeploy.settings import WORKER_TYPE, get_settings
from prefect_pipedeploy.spec import (
    Mode,
    spec_from_job_variables,
)

if TYPE_CHECKING:
    from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.admission import run_key
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.prefect_api.published import publish_capacity
from prefect_pipedeploy.prefect_api.sealed import discard, sealed_keys
from prefect_pipedeploy.runtimes.low_latency import PodSupervisor
from prefect_pipedeploy.worker.models import (
    PipeDeployJobConfiguration,
    PipeDeployVariables,
    PipeDeployWorkerResult,
)
from prefect_pipedeploy.worker.ram import RamAdmission, _watch_rss, worker_ram_capacity_mib

# How often a worker re-publishes its RAM capacity (readers drop entries older than 10 min).
CAPACITY_REFRESH_S = 60.0


# Flow-run state names whose events mean "a run may be ready to start" (new, retried, re-queued).
WAKE_ON_STATES = ("Scheduled", "AwaitingRetry", "Recovered")


class PipeDeployWorker(
    BaseWorker[PipeDeployJobConfiguration, PipeDeployVariables, PipeDeployWorkerResult]
):
    type = WORKER_TYPE
    job_configuration = PipeDeployJobConfiguration
    job_configuration_variables = PipeDeployVariables
    _description = (
        "Runs ML pipeline deployments: elastic runs as fresh processes, low-latency "
        "deployments in warm pods, within the machine's RAM."
    )
    _display_name = "PipeDeploy"
    _documentation_url = "https://github.com/prefect-pipedeploy/prefect-pipedeploy"

    def __init__(self, *args: Any, ram_capacity: str | None = None, **kwargs: Any) -> None:
        """`ram_capacity` ("8GiB") is the RAM this worker hands out; default: the
        `ram_capacity` setting, else total memory minus `ram_reserve`."""
        super().__init__(*args, **kwargs)
        self._wake = anyio.Event()
        self.ledger = RamLedger(worker_ram_capacity_mib(ram_capacity))
        self.admission = RamAdmission(
            self.ledger,
            self._work_pool_name,
            client=lambda: self.client,
            lease_dir=get_settings().home.resolve() / "ram-leases",
        )
        self._awaiting_ram: dict[UUID, str] = {}
        self._sealed: set[UUID] = set()  # runs sent to a pod with sealed secret inputs
        self.pods = PodSupervisor(
            client=get_client,
            worker_name=self.name,
            state_dir=get_settings().home.resolve() / "worker" / self.get_name_slug(),
            on_change=self.wake,
            on_finished=self.after_pod_run,
            admission=self.admission,
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
                loops.start_soon(self.pods.watch_memory)
                loops.start_soon(self.admission.renew_leases)
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

    async def _recover_abandoned(self) -> None:
        """Re-queue runs a dead worker claimed (Pending) but never started.

        Runs once when the worker starts: a run Pending for longer than `pending_recovery_s`
        belongs to no live worker (claims are followed by a start within seconds). Also gives
        back the pool RAM cap slots that dead workers of this machine still held.
        """
        await self.admission.release_dead_leases()
        cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
            seconds=get_settings().pending_recovery_s
        )
        stale = await self.client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
            ),
            limit=200,
        )
        for flow_run in stale:
            if flow_run.state is None or _plain(flow_run.state.timestamp) > cutoff:
                continue
            message = "Re-queued: the worker that claimed this execution stopped before starting it"
            with contextlib.suppress(Exception):
                await self.client.set_flow_run_state(
                    flow_run.id, Scheduled(name="Recovered", message=message), force=True
                )
                self._logger.info(
                    "Recovered run %s left Pending", flow_run.id, extra={"action": "run_recovered"}
                )
        self.wake()

    async def _pod_loop(self) -> None:
        """Keep one pod per low-latency deployment of the pool (started before any trigger)."""
        poll_s = get_settings().poll_seconds
        recovered = False
        capacity_published_at = -CAPACITY_REFRESH_S  # publish on the first round
        while True:
            if self._has_successfully_synced and not recovered:
                try:
                    await self._recover_abandoned()
                    recovered = True
                except Exception as exc:
                    self._logger.warning("Could not look for abandoned runs: %s", exc)
            if self._has_successfully_synced:
                try:
                    deployments = await read_all_deployments(
                        self.client,
                        work_pool_filter=WorkPoolFilter(
                            name=WorkPoolFilterName(any_=[self._work_pool_name])
                        ),
                    )
                    await self.pods.reconcile(deployments)
                    if time.monotonic() - capacity_published_at > CAPACITY_REFRESH_S:
                        await publish_capacity(
                            self.client, self._work_pool_name, self.name, self.ledger.capacity_mib
                        )
                        capacity_published_at = time.monotonic()
                except Exception as exc:
                    self._logger.warning("Could not reconcile pods: %s", exc)
            await anyio.sleep(poll_s)

    def wake(self) -> None:
        """Look for runs now instead of at the next poll."""
        self._wake.set()

    async def _listen_for_runs(self) -> None:
        """Wake the submit loop when a run of this pool becomes ready to start."""
        while self._work_pool is None:
            await anyio.sleep(0.2)
        event_filter = EventFilter(
            # only runs becoming ready to start: a run of ours that ends wakes the worker
            # locally (pod message, process exit), and every wake costs API calls
            event=EventNameFilter(name=[f"prefect.flow-run.{name}" for name in WAKE_ON_STATES]),
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
        elastic: list[tuple[Any, DeploymentResponse]] = []
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
            if mode == Mode.elastic.value and deployment is not None:
                elastic.append((response, deployment))
            # a low-latency run whose pod is not known yet waits for the pod loop
        for deployment_id, flow_runs in low_latency.items():
            await self._dispatch_to_pod(deployment_id, flow_runs)
        return await self._submit_scheduled_flow_runs(
            flow_run_response=await self._admit_elastic(elastic)
        )

    async def _admit_elastic(self, candidates: list[tuple[Any, DeploymentResponse]]) -> list[Any]:
        """The elastic runs whose RAM request fits now; the others wait, saying why."""
        ordered = sorted(candidates, key=lambda c: waiting_run(c[0].flow_run).sort_key())
        requests = []
        for response, deployment in ordered:
            flow_run = response.flow_run
            try:
                mib = spec_from_job_variables(deployment.job_variables).ram_request_mib
            except PipeDeployError:
                mib = 0  # an invalid spec fails in run(), with the reason
            requests.append(
                Request(
                    key=run_key(flow_run.id),
                    mib=mib,
                    label=f"execution {str(flow_run.id)[:8]} of {deployment.name}",
                    requested_at=waiting_run(flow_run).expected_start,
                )
            )
        now = datetime.datetime.now(datetime.timezone.utc)
        admitted = []
        for (response, _), decision in zip(
            ordered, await self.admission.decide(requests, now), strict=True
        ):
            if decision.admitted:
                self._awaiting_ram.pop(response.flow_run.id, None)
                admitted.append(response)
            else:
                await self._say_waiting_for_ram(response.flow_run, decision.reason)
        return admitted

    async def _say_waiting_for_ram(self, flow_run: FlowRun, reason: str) -> None:
        """Show in the run's state why it waits (only when the reason changes)."""
        if self._awaiting_ram.get(flow_run.id) == reason:
            return
        self._awaiting_ram[flow_run.id] = reason
        self._logger.info("run %s %s", flow_run.id, reason, extra={"action": "run_waiting_for_ram"})
        self.get_flow_run_logger(flow_run).info(reason, extra={"action": "run_waiting_for_ram"})
        scheduled = flow_run.state.state_details.scheduled_time if flow_run.state else None
        try:
            await self.client.set_flow_run_state(
                flow_run.id,
                Scheduled(name="AwaitingRAM", scheduled_time=scheduled, message=reason),
                force=True,
            )
        except Exception as exc:  # the reason is also in the run's logs
            self._logger.warning("Could not set the waiting reason of run %s: %s", flow_run.id, exc)

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        # BaseWorker calls this on every path by which a submitted run ends or is not started:
        # the run's RAM is free again.
        super()._release_limit_slot(flow_run_id)
        self.admission.release_soon(run_key(flow_run_id), then=self.wake)

    async def _dispatch_to_pod(self, deployment_id: UUID, flow_runs: list[FlowRun]) -> None:
        """Start the heads of a deployment's queue in its pod, within its parallelism."""
        pod = self.pods.pods.get(deployment_id)
        if pod is None or pod.status != "up":
            return
        by_id = {run.id: run for run in flow_runs}
        waiting = [waiting_run(run) for run in flow_runs if run.created is not None]
        if pod.spec.parallelism == 1:
            # queue mode: one at a time across every worker of the pool, counted in the API
            # (read after the waiting runs, so a run claimed meanwhile is seen one way or other)
            running = await self._count_active(deployment_id)
        else:
            running = len(pod.in_flight)  # parallel mode: the cap is per pod
        now = datetime.datetime.now(datetime.timezone.utc)
        heads = runs_to_start(waiting, running, pod.spec.parallelism, now=now)
        pod.runs_held_back = len(heads) < len(waiting)
        for head in heads:
            flow_run = by_id[UUID(head.id)]
            if await self._claim(flow_run):
                if sealed_keys(flow_run.parameters):
                    self._sealed.add(flow_run.id)
                pod.send_run(flow_run)
                self._logger.debug("Run %s sent to the pod of %s", flow_run.id, pod.name)

    async def _count_active(self, deployment_id: UUID) -> int:
        return await self.client.count_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(
                        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
                    )
                )
            ),
        )

    async def after_pod_run(self, deployment_id: UUID, flow_run_id: UUID, state: str) -> None:
        """A run of a pod ended: see `after_run` (only when it failed or had sealed inputs, so
        a run that succeeded costs no API call)."""
        if state in ("FAILED", "CRASHED") or flow_run_id in self._sealed:
            await self.after_run(deployment_id, flow_run_id)

    async def after_run(self, deployment_id: UUID, flow_run_id: UUID) -> None:
        """A run ended: re-queue it if it failed and retries remain; else it is final, and its
        sealed secret inputs are deleted."""
        self._sealed.discard(flow_run_id)
        try:
            async with get_client() as client:
                flow_run = await client.read_flow_run(flow_run_id)
                retried = await self._queue_retry(client, deployment_id, flow_run)
                final = flow_run.state is not None and flow_run.state.is_final()
                if not retried and final:
                    await discard(client, sealed_keys(flow_run.parameters))
        except Exception as exc:  # a retry that cannot be queued leaves the run failed
            self._logger.warning("Could not queue a retry of run %s: %s", flow_run_id, exc)
        self.wake()

    async def _queue_retry(self, client: Any, deployment_id: UUID, flow_run: FlowRun) -> bool:
        """Re-queue a failed or crashed run right after the next waiting one, if retries remain.

        The retry is the same flow run, put back in a Scheduled state ("AwaitingRetry") whose
        time places it right after the head of the queue: the order lives in the API.
        """
        if flow_run.state is None or flow_run.state.type not in (
            StateType.FAILED,
            StateType.CRASHED,
        ):
            return False
        if flow_run.run_count == 0:
            return False  # it never started (e.g. its inputs could not be resolved)
        deployment = await client.read_deployment(deployment_id)
        spec = spec_from_job_variables(deployment.job_variables)
        waiting = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
        # the next run may have started already (a slot freed as the run failed):
        # it is active now (Pending, Running), or it started and ended since
        of_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        not_this = FlowRunFilterId(not_any_=[flow_run.id])
        started = await client.read_flow_runs(
            deployment_filter=of_deployment,
            flow_run_filter=FlowRunFilter(
                id=not_this,
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                ),
            ),
            limit=1,
        ) or await client.read_flow_runs(
            deployment_filter=of_deployment,
            flow_run_filter=FlowRunFilter(
                id=not_this,
                start_time=FlowRunFilterStartTime(after_=flow_run.state.timestamp),  # type: ignore[arg-type]
            ),
            limit=1,
        )
        decision = decide_retry(
            str(flow_run.id),
            max(flow_run.run_count, 1),
            spec.max_retries,
            [waiting_run(run) for run in waiting if run.created is not None],
            datetime.datetime.now(datetime.timezone.utc),
            failed_created=_plain(flow_run.created) if flow_run.created else None,
            next_started=str(started[0].id) if started else None,
        )
        logger = self.get_flow_run_logger(flow_run)
        if not decision.retry:
            logger.info("Not retried: %s", decision.reason, extra={"action": "run_failed"})
            return False
        cause = flow_run.state.message or flow_run.state.name
        await client.set_flow_run_state(
            flow_run.id,
            Scheduled(
                name="AwaitingRetry",
                scheduled_time=decision.expected_start,
                message=f"{decision.reason}; attempt {flow_run.run_count} failed: {cause}",
            ),
            force=True,
        )
        logger.info(decision.reason, extra={"action": "run_retry_queued"})
        return True

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
                [sys.executable, "-m", "prefect_pipedeploy.engine.elastic", str(flow_run.id)],
                env=env,
                cwd=cwd,
            )
            if task_status is not None:
                task_status.started(process.pid)
            limit_mib = configuration.ram_request_mib
            async with anyio.create_task_group() as watch:
                exceeded: list[str] = []
                watch.start_soon(
                    _watch_rss, process.pid, limit_mib, configuration.ram_request, exceeded
                )
                ended = await wait_process(process)
                watch.cancel_scope.cancel()
        if exceeded:
            await self._report_crash(flow_run, f"The execution's process {exceeded[0]}.")
        elif not ended.ok:
            await self._report_crash(flow_run, f"The execution's process {ended.explanation}.")
        if flow_run.deployment_id is not None:
            await self.after_run(flow_run.deployment_id, flow_run.id)
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


def waiting_run(flow_run: FlowRun) -> WaitingRun:
    """A Scheduled run as the ordering sees it: its place is its scheduled time."""
    details = flow_run.state.state_details if flow_run.state else None
    expected = (
        (details.scheduled_time if details else None)
        or flow_run.next_scheduled_start_time
        or flow_run.expected_start_time
        or flow_run.created
    )
    assert flow_run.created is not None and expected is not None
    return WaitingRun(
        id=str(flow_run.id),
        expected_start=_plain(expected),
        created=_plain(flow_run.created),
        attempt=flow_run.run_count + 1,
    )


def _plain(moment: datetime.datetime) -> datetime.datetime:
    """A standard-library UTC datetime (Prefect's own type does not mix with timedelta)."""
    return datetime.datetime.fromisoformat(moment.isoformat()).astimezone(datetime.timezone.utc)


@contextlib.contextmanager
def _working_dir(path: Path | None) -> Any:
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="pipedeploy-run-") as tmp:
        yield Path(tmp)
