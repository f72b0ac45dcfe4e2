"""The `pipedeploy` worker: finds the runs of a work pool and starts each where its mode says.

For: picking up flow runs within a second of their creation (Prefect events wake the worker,
polling is the fallback), handing low-latency runs to their deployment's pod and elastic runs to
a fresh process once their RAM is admitted, re-queuing failed runs with retries left, and
keeping the pool's base job template in step with the deployment spec. The decisions are in
`dispatch` (where runs go, which start), `ordering` and `admission`; the processes in
`runtimes`. Not for: running the flow itself (`engine`).

    prefect worker start --type pipedeploy --pool pipedeploy [--with-healthcheck] [--run-once]
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB [--with-healthcheck]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.events.schemas.events import Event
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.utilities.services import start_client_metrics_server, stop_client_metrics_server
from prefect.workers.server import build_healthcheck_server

from prefect_pipedeploy._compat import WorkerBase
from prefect_pipedeploy.admission import RamLedger, run_key
from prefect_pipedeploy.exceptions import PipeDeployError, RuntimeStartError
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.prefect_api.runs import (
    cancel_run,
    crash_run,
    fail_run,
    requeue_run,
    run_id_of,
)
from prefect_pipedeploy.prefect_api.sealed import discard, sealed_keys
from prefect_pipedeploy.runtimes.base import RuntimeHandle
from prefect_pipedeploy.runtimes.docker import kill_container, runtime_for
from prefect_pipedeploy.runtimes.elastic import run_elastic
from prefect_pipedeploy.runtimes.low_latency import PodSupervisor
from prefect_pipedeploy.runtimes.process import (
    WORKER_PID_VARIABLE,
    ProcessRuntime,
    kill_process_tree,
)
from prefect_pipedeploy.settings import WORKER_TYPE, get_settings
from prefect_pipedeploy.spec import spec_from_job_variables
from prefect_pipedeploy.status import PodStatus
from prefect_pipedeploy.worker.cancel import CANCEL_EVENTS, Cancels
from prefect_pipedeploy.worker.dispatch import (
    Claimer,
    claim,
    count_active,
    deployment_of,
    pod_heads,
    queue_retry,
    ram_requests,
    say_waiting,
    split_ready_runs,
)
from prefect_pipedeploy.worker.leftovers import Leftovers
from prefect_pipedeploy.worker.models import (
    PipeDeployJobConfiguration,
    PipeDeployVariables,
    PipeDeployWorkerResult,
)
from prefect_pipedeploy.worker.ram import RamAdmission, RssWatcher, worker_ram_capacity_mib
from prefect_pipedeploy.worker.rounds import Announced, Rounds
from prefect_pipedeploy.worker.upkeep import Upkeep

#: Flow-run state names whose events mean "a run may be ready to start" (new, retried, re-queued).
WAKE_ON_STATES = ("Scheduled", "AwaitingRetry", "Recovered")


class PipeDeployWorker(
    WorkerBase[PipeDeployJobConfiguration, PipeDeployVariables, PipeDeployWorkerResult]
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
        settings = get_settings()
        self._rounds = Rounds()  # the submit loop's
        self.claimer = Claimer.this_process(self.name)  # signs this worker's claims
        self.runtime = ProcessRuntime()
        self.rss = RssWatcher()
        self.ledger = RamLedger(worker_ram_capacity_mib(ram_capacity))
        self.admission = RamAdmission(
            self.ledger,
            self.pool_name,
            client=lambda: self.client,
            lease_dir=settings.home.resolve() / "ram-leases",
        )
        self._awaiting_ram: dict[UUID, str] = {}
        self._sealed: set[UUID] = set()  # runs sent to a pod with sealed secret inputs
        self._claiming: set[UUID] = set()  # claims under way (a claim then a hand-off to a pod)
        self._elastic_running: set[UUID] = set()  # submitted to run(), process or not yet
        self._elastic: dict[UUID, RuntimeHandle] = {}  # their processes, once started
        self._crashes_reported: set[UUID] = set()  # by run(), not yet seen by BaseWorker
        self._announced = Announced(self._rounds)  # runs an event woke us for, not found yet
        self.leftovers = Leftovers(self)  # what dead workers of this machine left running
        self.cancels = Cancels(self)  # runs asked to stop (Cancelling)
        self.upkeep = Upkeep(self)  # pods kept, capacity published, what others left recovered
        self.pods = PodSupervisor(
            runtime=self.runtime,
            rss=self.rss,
            client=get_client,
            worker_name=self.name,
            state_dir=settings.home.resolve() / "worker" / self.get_name_slug(),
            on_change=self.wake,
            on_finished=self.after_pod_run,
            admission=self.admission,
            environment=self.api_environment,
        )

    async def teardown(self, *exc_info: Any) -> None:
        """Stop gracefully: pods and elastic runs drain at once (`drain_grace_s`)."""
        await asyncio.gather(self.pods.stop_all(), self._drain_elastic())
        await super().teardown(*exc_info)

    async def _drain_elastic(self) -> None:
        """Let running elastic executions finish within the grace; end the others Crashed,
        saying why, and stop their processes."""
        grace_s = get_settings().drain_grace_s
        with anyio.move_on_after(grace_s):
            while self._elastic:
                await anyio.sleep(0.1)
        for flow_run_id, process in list(self._elastic.items()):
            message = (
                f"The worker {self.name!r} was stopped and this execution did not finish within "
                f"the {grace_s:g} s it was given; run it again"
            )
            await crash_run(self.client, flow_run_id, message)
            process.signal(signal.SIGKILL)

    # ---- loops ------------------------------------------------------------------------------

    async def start(
        self,
        run_once: bool = False,
        with_healthcheck: bool = False,
        printer: Any = print,
    ) -> None:
        """Run the worker: sync with the API, listen for events, submit runs as they come.

        `run_once`: sync, start the pods, start what is ready now, wait for those runs to end,
        stop. `with_healthcheck`: serve Prefect's worker health check (`GET /health` on
        PREFECT_WORKER_WEBSERVER_HOST:PREFECT_WORKER_WEBSERVER_PORT) while the worker runs.
        """
        with self._healthcheck(with_healthcheck), _client_metrics():
            async with self:
                if run_once:
                    await self._serve_once()
                else:
                    await self._serve(printer)
        printer(f"Worker {self.name!r} stopped!")

    async def _serve(self, printer: Any) -> None:
        async with anyio.create_task_group() as loops:
            loops.start_soon(self._sync_loop)
            loops.start_soon(self._listen, WAKE_ON_STATES, self.run_ready)
            loops.start_soon(self._listen, CANCEL_EVENTS, self.cancels.on_event)
            loops.start_soon(self.cancels.run)
            loops.start_soon(self._submit_loop)
            loops.start_soon(self.upkeep.run)
            loops.start_soon(self.rss.run)
            loops.start_soon(self.admission.renew_leases)
            await self.emit_started_event()
            printer(f"Worker {self.name!r} started!")

    async def _serve_once(self) -> None:
        """One pass: pods up first (so their runs can start), then everything ready now."""
        await self.sync_with_api()
        async with anyio.create_task_group() as loops:
            loops.start_soon(self.rss.run)
            loops.start_soon(self.cancels.run)
            await self.reconcile_pods()
            timeout_s = get_settings().pod_start_timeout_s
            with anyio.move_on_after(timeout_s):
                while any(p.status == PodStatus.creation_pending for p in self.pods.pods.values()):
                    await anyio.sleep(0.1)
            submitted = {run.id for run in await self.get_and_submit_flow_runs()}
            while any(
                self.is_submitting(i) or i in self._elastic_running for i in submitted
            ) or any(p.in_flight for p in self.pods.pods.values()):
                await anyio.sleep(0.1)
            loops.cancel_scope.cancel()

    @contextlib.contextmanager
    def _healthcheck(self, enabled: bool) -> Iterator[None]:
        """Prefect's worker health check, served from a thread while the worker runs."""
        if not enabled:
            yield
            return
        server = build_healthcheck_server(self, get_settings().poll_seconds)
        thread = threading.Thread(target=server.run, name="healthcheck-server", daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.should_exit = True
            thread.join(timeout=5)

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync_with_api()
            except Exception as exc:
                self.worker_logger.warning("Could not sync with the Prefect API: %s", exc)
            await anyio.sleep(self.heartbeat_interval_seconds)

    async def _submit_loop(self) -> None:
        async def failed(exc: Exception) -> None:
            self.worker_logger.warning(
                "Could not fetch scheduled runs: %s: %s", type(exc).__name__, exc
            )
            await anyio.sleep(1)

        await self._rounds.run(get_settings().poll_seconds, self.get_and_submit_flow_runs, failed)

    def held_runs(self) -> set[UUID]:
        """The runs this worker has claimed: being submitted, running elastic, or in a pod."""
        held = set(self._elastic_running) | self.submitting_runs() | self._claiming
        for pod in self.pods.pods.values():
            held |= pod.in_flight
        return held

    async def reconcile_pods(self) -> None:
        deployments = await read_all_deployments(
            self.client,
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.pool_name])),
        )
        await self.pods.reconcile(deployments)

    @property
    def api_url(self) -> str | None:
        """The Prefect API this worker serves (None: Prefect's ephemeral mode)."""
        value = PREFECT_API_URL.value()
        return str(value).rstrip("/") if value else None

    def api_environment(self) -> dict[str, str]:
        """The environment naming this worker's API to the processes it starts: they talk to
        it, and a later worker adopts them only when it serves the same API (and only once
        this worker, which each names, is gone)."""
        named = {WORKER_PID_VARIABLE: str(os.getpid())}
        return {"PREFECT_API_URL": self.api_url, **named} if self.api_url else named

    def wake(self) -> None:
        """Look for runs now instead of at the next poll."""
        self._rounds.wake()

    def run_ready(self, event: Event) -> None:
        """A run of this pool may be ready to start (its event): look for runs now, unless it
        waits for a parallel pod of ours with every slot taken. Then the pod's next finished
        run looks (`runs_held_back`), and until that look the pod takes no direct call, which
        would pass the waiting run: a burst of calls to a full pod costs the worker no read
        per call, as the look would find nothing to start."""
        deployment_id = deployment_of(event)
        pod = self.pods.pods.get(deployment_id) if deployment_id is not None else None
        if pod is None or not pod.full:
            run_id = run_id_of(event)
            if run_id is not None:
                self._announced.add(run_id)
            self.wake()
            return
        pod.runs_held_back = True
        pod.open_direct(False)

    async def _listen(self, states: tuple[str, ...], on_event: Callable[[Event], object]) -> None:
        """Call `on_event` when a run of this pool enters one of `states`: with WAKE_ON_STATES
        `run_ready` (a run may be ready to start), with CANCEL_EVENTS the cancel loop's wake.

        Only those states: a run of ours that ends wakes the worker locally (pod message,
        process exit), and every wake costs API calls."""
        while self.pool_id is None:
            await anyio.sleep(0.2)
        event_filter = EventFilter(
            event=EventNameFilter(name=[f"prefect.flow-run.{name}" for name in states]),
            related=EventRelatedFilter(id=[f"prefect.work-pool.{self.pool_id}"]),
        )
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    async for event in subscriber:
                        on_event(event)
            except Exception as exc:  # the poll keeps working meanwhile
                self.worker_logger.debug("Event subscription ended (%s); reconnecting", exc)
                await anyio.sleep(2)

    # ---- choosing runs ----------------------------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        if not self.has_synced:
            return []
        responses = {response.flow_run.id: response for response in await self.fetch_ready_runs()}
        self._announced.after_round(set(responses))
        runs = [response.flow_run for response in responses.values()]
        deployments: dict[UUID, DeploymentResponse | None] = {}
        for deployment_id in {run.deployment_id for run in runs}:
            if deployment_id is not None and deployment_id not in self.pods.pods:
                deployments[deployment_id] = await self.read_deployment(deployment_id)
        modes = {
            i: (d.job_variables or {}).get("mode") if d is not None else None
            for i, d in deployments.items()
        }
        ready = split_ready_runs(runs, self.pods.pods, modes, self.submitting_runs())
        for deployment_id, flow_runs in ready.to_pods.items():
            await self._dispatch_to_pod(deployment_id, flow_runs)
        for deployment_id, pod in self.pods.pods.items():
            # a pod takes direct calls only while no run of its deployment waits for it
            pod.open_direct(deployment_id not in ready.to_pods or not pod.runs_held_back)
        admitted = await self._admit_elastic(ready.elastic, deployments)
        return await self.submit_runs([responses[run.id] for run in admitted])

    async def _admit_elastic(
        self, flow_runs: list[FlowRun], deployments: dict[UUID, DeploymentResponse | None]
    ) -> list[FlowRun]:
        """The elastic runs whose RAM request fits now; the others wait, saying why."""
        candidates = []
        for flow_run in flow_runs:
            deployment = deployments.get(flow_run.deployment_id)  # type: ignore[arg-type]
            assert deployment is not None  # only runs of known elastic deployments come here
            try:
                mib = spec_from_job_variables(deployment.job_variables).ram_request_mib
            except PipeDeployError:
                mib = 0  # an invalid spec fails in run(), with the reason
            candidates.append((flow_run, deployment.name, mib))
        requests = ram_requests(candidates)
        by_key = {run_key(run.id): run for run in flow_runs}
        now = datetime.datetime.now(datetime.timezone.utc)
        admitted = []
        for request, decision in zip(
            requests, await self.admission.decide(requests, now), strict=True
        ):
            flow_run = by_key[request.key]
            if decision.admitted:
                self._awaiting_ram.pop(flow_run.id, None)
                admitted.append(flow_run)
            else:
                await self._say_waiting_for_ram(flow_run, decision.reason)
        return admitted

    async def _say_waiting_for_ram(self, flow_run: FlowRun, reason: str) -> None:
        """Show in the run's state why it waits (only when the reason changes)."""
        if self._awaiting_ram.get(flow_run.id) == reason:
            return
        try:
            if not await say_waiting(self.client, flow_run, "AwaitingRAM", reason, self.claimer):
                return  # another worker claimed it meanwhile: it does not wait any more
        except Exception as exc:  # the reason is also in the run's logs
            self.worker_logger.warning(
                "Could not set the waiting reason of run %s: %s", flow_run.id, exc
            )
        self._awaiting_ram[flow_run.id] = reason
        action = {"action": "run_waiting_for_ram"}
        self.worker_logger.info("run %s %s", flow_run.id, reason, extra=action)
        self.get_flow_run_logger(flow_run).info(reason, extra=action)

    def on_run_released(self, flow_run_id: UUID) -> None:
        # BaseWorker calls this on every path by which a submitted run ends or is not started:
        # the run's RAM is free again.
        self.admission.release_soon(run_key(flow_run_id), then=self.wake)

    async def _dispatch_to_pod(self, deployment_id: UUID, flow_runs: list[FlowRun]) -> None:
        """Start the heads of a deployment's queue in its pod, within its parallelism."""
        pod = self.pods.pods.get(deployment_id)
        if pod is not None and pod.start_error is not None and not pod.is_up:
            await self._fail_for_pod(pod.start_error, flow_runs)
            return
        if pod is None or not pod.is_up:
            return
        if pod.spec.parallelism == 1:
            # queue mode: one at a time across every worker of the pool, counted in the API
            # (read after the waiting runs, so a run claimed meanwhile is seen one way or other)
            running = await count_active(self.client, deployment_id)
        else:
            running = len(pod.in_flight)  # parallel mode: the cap is per pod
        now = datetime.datetime.now(datetime.timezone.utc)
        heads, pod.runs_held_back = pod_heads(flow_runs, running, pod.spec.parallelism, now)
        for flow_run in heads:
            if not await self._claim(flow_run):
                continue
            if sealed_keys(flow_run.parameters):
                self._sealed.add(flow_run.id)
            if pod.send_run(flow_run):
                self.worker_logger.debug("Run %s sent to the pod of %s", flow_run.id, pod.name)
            else:  # the pod went down between the check and the hand-off: back to the queue
                await requeue_run(
                    self.client,
                    flow_run.id,
                    f"Re-queued: the low-latency pod of deployment {pod.name!r} went down as "
                    "this execution was handed to it",
                )

    async def _fail_for_pod(self, start_error: str, flow_runs: list[FlowRun]) -> None:
        """End the runs waiting for a pod whose container cannot start Failed with why, as an
        elastic run whose container cannot start ends (claimed first: one worker ends each)."""
        for flow_run in flow_runs:
            if not await self._claim(flow_run):
                continue
            self.get_flow_run_logger(flow_run).error(start_error)
            await fail_run(self.client, flow_run.id, start_error)
            await discard(self.client, sealed_keys(flow_run.parameters))

    async def _claim(self, flow_run: FlowRun) -> bool:
        self._claiming.add(flow_run.id)
        try:
            return await claim(self.client, flow_run, self.claimer)
        except Exception as exc:
            self.worker_logger.warning("Could not claim run %s: %s", flow_run.id, exc)
            return False
        finally:  # a run claimed is handed to its pod (`in_flight`) with no await between
            self._claiming.discard(flow_run.id)

    def claim_message(self) -> str | None:
        """Signs BaseWorker's "Submitting" state, which follows an elastic run's claim."""
        return self.claimer.message()

    async def claim_run(self, flow_run: FlowRun) -> bool:
        """The claim of an elastic run before `run` starts it: the same as a pod's (`claim`)."""
        return await self._claim(flow_run)

    async def after_pod_run(
        self, deployment_id: UUID, flow_run_id: UUID, state: str, sealed: bool = False
    ) -> None:
        """A run of a pod ended: see `after_run` (only when it failed or had sealed inputs, so
        a run that succeeded costs no API call)."""
        self.cancels.forget(flow_run_id)
        if state in ("FAILED", "CRASHED") or sealed or flow_run_id in self._sealed:
            await self.after_run(deployment_id, flow_run_id)

    async def after_run(self, deployment_id: UUID, flow_run_id: UUID) -> None:
        """A run ended: re-queue it if it failed and retries remain; else it is final, and its
        sealed secret inputs are deleted."""
        self._sealed.discard(flow_run_id)
        try:
            async with get_client() as client:
                flow_run = await client.read_flow_run(flow_run_id)
                retried = await queue_retry(client, flow_run, self.get_flow_run_logger(flow_run))
                final = flow_run.state is not None and flow_run.state.is_final()
                if not retried and final:
                    await discard(client, sealed_keys(flow_run.parameters))
        except Exception as exc:  # a retry that cannot be queued leaves the run failed
            self.worker_logger.warning("Could not queue a retry of run %s: %s", flow_run_id, exc)
        self.wake()

    async def read_deployment(self, deployment_id: UUID) -> DeploymentResponse | None:
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
        env = {
            **os.environ,
            **{k: v for k, v in configuration.env.items() if v is not None},
            **self.api_environment(),
        }

        def started(process: RuntimeHandle) -> None:
            self._elastic[flow_run.id] = process
            if task_status is not None:
                # a pid, or a container's id (Prefect stores either as the infrastructure pid)
                ident: Any = process.identifier
                task_status.started(int(ident) if ident.isdigit() else ident)
            if self.cancels.cancelled(flow_run.id):  # cancelled as it started
                process.signal(signal.SIGKILL)

        self._elastic_running.add(flow_run.id)
        try:
            if (reason := self.cancels.cancelled(flow_run.id)) is not None:
                await cancel_run(self.client, flow_run.id, reason)  # it never starts
                return PipeDeployWorkerResult(identifier="", status_code=0)
            try:
                outcome = await run_elastic(
                    runtime_for(configuration, self.runtime),
                    self.rss,
                    flow_run.id,
                    env,
                    configuration.working_dir,
                    configuration.ram_request,
                    configuration.ram_request_mib,
                    started,
                )
            except RuntimeStartError as exc:  # this run cannot start; the others go on
                self.get_flow_run_logger(flow_run).error(str(exc))
                await fail_run(self.client, flow_run.id, str(exc))
                return PipeDeployWorkerResult(identifier="", status_code=0)
            if (reason := self.cancels.cancelled(flow_run.id)) is not None:
                self._crashes_reported.add(flow_run.id)  # killed on purpose: no crash
                await cancel_run(self.client, flow_run.id, reason)
            elif outcome.crash is not None:
                self._crashes_reported.add(flow_run.id)
                await self._report_crash(flow_run, outcome.crash)
            if flow_run.deployment_id is not None:
                await self.after_run(flow_run.deployment_id, flow_run.id)
        finally:
            self._elastic_running.discard(flow_run.id)
            self._elastic.pop(flow_run.id, None)
            self.cancels.forget(flow_run.id)
        return PipeDeployWorkerResult(identifier=outcome.identifier, status_code=outcome.exit_code)

    def elastic_runs(self) -> set[UUID]:
        """The elastic runs this worker holds (submitted to `run`, process started or not)."""
        return set(self._elastic_running)

    def elastic_process(self, flow_run_id: UUID) -> RuntimeHandle | None:
        """The process of an elastic run of this worker, once started."""
        return self._elastic.get(flow_run_id)

    def crash_reported(self, flow_run_id: UUID) -> bool:
        """Whether `run` reported this run's crash (and its retry) itself: then BaseWorker does
        not mark it Crashed a second time, over the retry."""
        if flow_run_id not in self._crashes_reported:
            return False
        self._crashes_reported.discard(flow_run_id)
        return True

    async def _report_crash(self, flow_run: FlowRun, message: str) -> None:
        self.get_flow_run_logger(flow_run).error(message)
        await crash_run(self.client, flow_run.id, message)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: PipeDeployJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        if infrastructure_pid.isdigit():
            kill_process_tree(int(infrastructure_pid))
        else:  # a container's id
            await asyncio.to_thread(kill_container, infrastructure_pid)


@contextlib.contextmanager
def _client_metrics() -> Iterator[None]:
    """Prefect's client metrics server (when PREFECT_CLIENT_METRICS_ENABLED), as BaseWorker
    starts it."""
    start_client_metrics_server()
    try:
        yield
    finally:
        stop_client_metrics_server()
