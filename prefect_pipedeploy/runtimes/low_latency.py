"""The low-latency runtime: the worker's side of pods (start, watch, feed, re-create, stop).

For: `PodSupervisor`, which keeps one pod per low-latency deployment of the worker's pool: its
process (`python -m prefect_pipedeploy.engine.pod`, started by a `Runtime`), its control
channel, its runs in flight, its status as the SDK sees it (a Prefect variable, see
`prefect_api.published`) and its state changes as Prefect events (`prefect-pipedeploy.pod.ready`,
`.crashed`, `.restarted`, `.stopped`, `.load-failed`); and `plan_pods`, the pure decision of
which pods to start and stop for the pool's deployments.
Not for: choosing which run starts (`ordering` decides, the worker applies), or executing runs
(the pod does, `engine.pod`).

The channel is a socket pair with JSON lines: the worker sends {"op": "run", "flow_run": {...}};
the pod answers {"event": "ready"}, {"event": "load_failed", "error": ...},
{"event": "started", "flow_run_id": ...} and {"event": "finished", "flow_run_id": ...,
"state": ..., "message": ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import emit_event
from prefect.logging import get_logger

from prefect_pipedeploy.admission import Request, pod_key
from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.prefect_api.published import forget_pod_status, publish_pod_status
from prefect_pipedeploy.prefect_api.runs import crash_run
from prefect_pipedeploy.runtimes.base import Runtime, RuntimeHandle
from prefect_pipedeploy.spec import DeploymentSpec, Mode, spec_from_job_variables
from prefect_pipedeploy.status import PodStatus
from prefect_pipedeploy.worker.ram import RamAdmission, RssWatcher

logger = get_logger("prefect_pipedeploy.runtimes.low_latency")

LOG_TAIL_CHARS = 3500  # a Prefect variable holds at most 5000 characters
EXIT_RECYCLE = 75  # a pod that exits with this code asks to be re-created at once (engine.pod)
STOP_GRACE_S = 10.0  # how long a stopped pod may take to finish before it is killed


def backoff_s(failures: int) -> float:
    """Seconds to wait before re-creating a pod after `failures` failures in a row."""
    return float(min(30, 2 ** max(0, failures - 1)))


# ---------------------------------------------------------------------------------------------
# Which pods to start and stop (pure)
# ---------------------------------------------------------------------------------------------


class DeploymentLike(Protocol):
    """What `plan_pods` reads of a deployment (a Prefect `DeploymentResponse` fits)."""

    @property
    def id(self) -> UUID: ...

    @property
    def job_variables(self) -> dict[str, Any] | None: ...

    @property
    def paused(self) -> bool: ...

    @property
    def updated(self) -> Any: ...

    @property
    def created(self) -> Any: ...


@dataclass(frozen=True)
class PodStop:
    """A pod to stop: why, and whether its deployment is gone (its status is then forgotten
    rather than published as `down`) or will get a new pod at once."""

    deployment_id: UUID
    reason: str
    deleted: bool = False
    replaced: bool = False


D = TypeVar("D", bound=DeploymentLike)


@dataclass(frozen=True)
class PodPlan(Generic[D]):
    """What the supervisor does for the pool's deployments, in this order."""

    stop: list[PodStop]
    """Pods of deployments that are gone, disabled, no longer low latency, or updated."""
    start: list[D]
    """Low-latency deployments without a pod, oldest first (RAM admission decides which)."""


def wants_pod(deployment: DeploymentLike) -> bool:
    """Whether a deployment should have a pod: low latency, enabled, with valid settings (an
    invalid spec gets no pod; its runs fail with the reason)."""
    if deployment.paused:
        return False
    try:
        spec = spec_from_job_variables(deployment.job_variables)
    except PipeDeployError:
        return False
    return spec.mode == Mode.low_latency.value


def plan_pods(running: Mapping[UUID, Any], deployments: Sequence[D]) -> PodPlan[D]:
    """Which pods to stop and start, given the pods running now (deployment id -> the
    deployment's `updated` time when its pod started) and the pool's deployments."""
    by_id = {deployment.id: deployment for deployment in deployments}
    wanted = {d.id: d for d in deployments if wants_pod(d)}
    stop = []
    for deployment_id, started_for in running.items():
        if deployment_id not in by_id:
            stop.append(PodStop(deployment_id, "its deployment was deleted", deleted=True))
        elif deployment_id not in wanted:
            stop.append(PodStop(deployment_id, "its deployment was disabled or changed mode"))
        elif wanted[deployment_id].updated != started_for:
            stop.append(PodStop(deployment_id, "its deployment was updated", replaced=True))
    stopped = {s.deployment_id for s in stop}
    start = sorted(
        (d for d in wanted.values() if d.id not in running or d.id in stopped),
        key=lambda d: (d.created is None, d.created or 0),
    )
    return PodPlan(stop=stop, start=start)


# ---------------------------------------------------------------------------------------------
# The pods of one worker
# ---------------------------------------------------------------------------------------------


@dataclass
class PodHandle:
    """One pod as its worker knows it."""

    deployment: DeploymentResponse
    spec: DeploymentSpec
    log_path: Path
    status: PodStatus = PodStatus.creation_pending
    message: str | None = None
    process: RuntimeHandle | None = None
    in_flight: set[UUID] = field(default_factory=set)
    failures: int = 0
    kill_reason: str | None = None  # set when the worker kills the pod on purpose
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    # the worker's last look saw runs of this deployment it could not start yet: when a run
    # ends, look again at once (otherwise a run's end costs no API call)
    runs_held_back: bool = False

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def is_up(self) -> bool:
        return self.status == PodStatus.up and self.writer is not None

    def send_run(self, flow_run: FlowRun) -> bool:
        """Hand a claimed run to the pod; False when its channel is closed (it is going down)."""
        if self.writer is None or self.writer.is_closing():
            return False
        self.in_flight.add(flow_run.id)
        message = {"op": "run", "flow_run": flow_run.model_dump(mode="json")}
        self.writer.write(json.dumps(message).encode() + b"\n")
        return True


class PodSupervisor:
    """Keeps one pod per low-latency deployment alive for a worker."""

    def __init__(
        self,
        runtime: Runtime,
        rss: RssWatcher,
        client: Callable[[], PrefectClient],
        worker_name: str,
        state_dir: Path,
        on_change: Callable[[], None],
        on_finished: Callable[[UUID, UUID, str], Awaitable[None]],
        admission: RamAdmission,
    ) -> None:
        self.runtime = runtime
        self.rss = rss
        self.admission = admission  # a pod holds its ram_request from start to stop
        self._waiting_for_ram: dict[UUID, str] = {}
        self._client = client  # makes a new client (a pod's events come from its own task)
        self.worker_name = worker_name
        self.state_dir = state_dir
        self.on_change = on_change  # wakes the worker: a slot freed, a pod came up
        # (deployment id, flow run id, final state type): a run of a pod ended
        self.on_finished = on_finished
        self.pods: dict[UUID, PodHandle] = {}

    # ---- reconciliation -----------------------------------------------------------------

    async def reconcile(self, deployments: list[DeploymentResponse]) -> None:
        """Start pods for new low-latency deployments, stop those gone, restart changed ones."""
        plan = plan_pods({i: p.deployment.updated for i, p in self.pods.items()}, deployments)
        for stop in plan.stop:
            await self.stop(
                stop.deployment_id, stop.reason, publish=not (stop.deleted or stop.replaced)
            )
            if stop.deleted:
                await self._forget(stop.deployment_id)
        new = plan.start
        requests = [
            Request(
                key=pod_key(d.id),
                mib=spec_from_job_variables(d.job_variables).ram_request_mib,
                label=f"pod of {d.name}",
                requested_at=d.created or datetime.datetime.now(datetime.timezone.utc),
            )
            for d in new
        ]
        now = datetime.datetime.now(datetime.timezone.utc)
        for deployment, decision in zip(
            new, await self.admission.decide(requests, now), strict=True
        ):
            if decision.admitted:
                self._waiting_for_ram.pop(deployment.id, None)
                self._start(deployment)
            elif self._waiting_for_ram.get(deployment.id) != decision.reason:
                self._waiting_for_ram[deployment.id] = decision.reason
                waiting = PodHandle(
                    deployment, spec_from_job_variables(deployment.job_variables), Path()
                )
                logger.info(
                    "pod %s: %s",
                    deployment.name,
                    decision.reason,
                    extra={"action": "pod_waiting_for_ram"},
                )
                await self._publish(waiting, PodStatus.creation_pending, decision.reason)

    def _start(self, deployment: DeploymentResponse) -> None:
        pod = PodHandle(
            deployment=deployment,
            spec=spec_from_job_variables(deployment.job_variables),
            log_path=self.state_dir / "pods" / f"{deployment.name}-{deployment.id.hex[:8]}.log",
        )
        self.pods[deployment.id] = pod
        pod.task = asyncio.create_task(self._supervise(pod), name=f"pod-{deployment.name}")

    async def stop(self, deployment_id: UUID, reason: str, publish: bool = True) -> None:
        """Stop a pod (SIGTERM, then SIGKILL after `STOP_GRACE_S`) and free its RAM."""
        pod = self.pods.pop(deployment_id, None)
        if pod is None:
            return
        pod.stopping = True
        if pod.process is not None:
            pod.process.signal(signal.SIGTERM)
        if pod.task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pod.task), STOP_GRACE_S)
            pod.task.cancel()
        if pod.process is not None:
            pod.process.signal(signal.SIGKILL)
        await self.admission.release(pod_key(deployment_id))  # its RAM is free once it is gone
        self._event(pod, "stopped", reason=reason)
        if publish:
            await self._publish(pod, PodStatus.down, f"stopped: {reason}")

    async def stop_all(self) -> None:
        for deployment_id in list(self.pods):
            await self.stop(deployment_id, "its worker stopped")

    # ---- one pod's life -------------------------------------------------------------------

    async def _supervise(self, pod: PodHandle) -> None:
        while not pod.stopping:
            started = time.monotonic()
            exit_explanation, load_error = await self._run_once(pod)
            if pod.stopping:
                break
            await self._crash_in_flight(pod, exit_explanation)
            if load_error is not None:
                pod.failures += 1
                await self._publish(
                    pod, PodStatus.creation_failed, f"the pipeline failed to load: {load_error}"
                )
                self._event(pod, "load-failed", error=load_error)
            else:
                if time.monotonic() - started > 60:
                    pod.failures = 0
                pod.failures += 1
                await self._publish(pod, PodStatus.down_retrying, f"the pod {exit_explanation}")
                self._event(pod, "crashed", reason=exit_explanation)
            await asyncio.sleep(0 if exit_explanation == "recycled" else backoff_s(pod.failures))
            if not pod.stopping:
                self._event(pod, "restarted", attempt=pod.failures)

    async def _run_once(self, pod: PodHandle) -> tuple[str, str | None]:
        """Start the pod process and serve its channel until it exits."""
        ours, theirs = socket.socketpair()
        env = {
            **os.environ,
            **{
                k: str(v)
                for k, v in (pod.deployment.job_variables or {}).get("env", {}).items()
                if v is not None
            },
        }
        try:
            pod.process = await self.runtime.start(
                [
                    sys.executable,
                    "-m",
                    "prefect_pipedeploy.engine.pod",
                    "--deployment-id",
                    str(pod.deployment.id),
                    "--control-fd",
                    str(theirs.fileno()),
                ],
                env=env,
                log_path=pod.log_path,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        key = pod_key(pod.deployment.id)
        self.rss.watch(
            key, pod.process, pod.spec.ram_request_mib, pod.spec.ram_request, self._over_ram(pod)
        )
        await self._publish(pod, PodStatus.creation_pending, "importing the pipeline")
        reader, pod.writer = await asyncio.open_connection(sock=ours)
        load_error: str | None = None
        try:
            while line := await reader.readline():
                message = json.loads(line)
                load_error = await self._on_message(pod, message) or load_error
        finally:
            pod.writer.close()
            pod.writer = None
        ended = await pod.process.wait()
        self.rss.unwatch(key)
        pod.process = None
        if ended.exit_code == EXIT_RECYCLE:
            return "recycled", None
        if pod.kill_reason is not None:
            reason, pod.kill_reason = pod.kill_reason, None
            return reason, load_error
        return ended.explanation, load_error

    def _over_ram(self, pod: PodHandle) -> Callable[[str], None]:
        def exceeded(message: str) -> None:
            pod.kill_reason = message
            logger.warning("pod %s %s", pod.name, message, extra={"action": "pod_oom_killed"})

        return exceeded

    async def _on_message(self, pod: PodHandle, message: dict[str, Any]) -> str | None:
        event = message.get("event")
        if event == "ready":
            await self._publish(pod, PodStatus.up, None)
            self._event(pod, "ready", pid=message.get("pid"))
            self.on_change()
        elif event == "finished":
            flow_run_id = UUID(message["flow_run_id"])
            pod.in_flight.discard(flow_run_id)
            if pod.runs_held_back:
                self.on_change()
            await self.on_finished(pod.deployment.id, flow_run_id, str(message.get("state")))
        elif event == "load_failed":
            return str(message.get("error"))
        return None

    async def _crash_in_flight(self, pod: PodHandle, explanation: str) -> None:
        """Runs that were inside a pod that died end Crashed, saying so."""
        message = (
            f"The low-latency pod of deployment {pod.name!r} {explanation} while running this "
            "execution; the pod is being re-created."
        )
        crashed = list(pod.in_flight)
        async with self._client() as client:
            for flow_run_id in crashed:
                await crash_run(client, flow_run_id, message)
        pod.in_flight.clear()
        self.on_change()
        for flow_run_id in crashed:
            await self.on_finished(pod.deployment.id, flow_run_id, "CRASHED")

    # ---- reporting ------------------------------------------------------------------------

    async def _publish(self, pod: PodHandle, status: PodStatus, message: str | None) -> None:
        """Write the pod's status (and the tail of its output) where the SDK reads it."""
        pod.status, pod.message = status, message
        value = {
            "status": status.value,
            "message": message,
            "pid": pod.process.pid if pod.process is not None else None,
            "worker": self.worker_name,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "log_tail": _tail(pod.log_path, LOG_TAIL_CHARS),
        }
        try:
            async with self._client() as client:
                await publish_pod_status(client, pod.deployment.id, self.worker_name, value)
        except Exception as exc:  # status is informative; the pod keeps running
            logger.warning("Could not publish the status of pod %s: %s", pod.name, exc)

    async def _forget(self, deployment_id: UUID) -> None:
        """Delete this worker's status of a deleted deployment's pod."""
        try:
            async with self._client() as client:
                await forget_pod_status(client, deployment_id, self.worker_name)
        except Exception as exc:  # the next worker start finds nothing to show for it
            logger.debug("Status of the pod of deleted deployment %s: %s", deployment_id, exc)

    def _event(self, pod: PodHandle, what: str, **payload: Any) -> None:
        logger.info("pod %s: %s %s", pod.name, what, payload or "", extra={"action": f"pod_{what}"})
        with contextlib.suppress(Exception):
            emit_event(
                event=f"prefect-pipedeploy.pod.{what}",
                resource={
                    "prefect.resource.id": f"prefect-pipedeploy.pod.{pod.deployment.id}",
                    "prefect.resource.name": f"pod of {pod.name}",
                },
                related=[
                    {
                        "prefect.resource.id": f"prefect.deployment.{pod.deployment.id}",
                        "prefect.resource.role": "deployment",
                        "prefect.resource.name": pod.name,
                    }
                ],
                payload={"worker": self.worker_name, **payload},
            )


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chars))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
