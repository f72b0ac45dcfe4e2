"""The low-latency runtime: the worker's side of pods (start, watch, feed, re-create, stop).

For: `PodSupervisor`, which keeps one pod per low-latency deployment of the worker's pool: its
process (`python -m prefect_pipedeploy.engine.pod`, started by a `Runtime`), its control
channel, its runs in flight, its status as the SDK sees it (a Prefect variable, see
`prefect_api.published`) and its state changes as Prefect events (`prefect-pipedeploy.pod.ready`,
`.crashed`, `.restarted`, `.stopped`, `.load-failed`), applying `pod_plan.plan_pods`, the pure
decision of which pods to start and stop for the pool's deployments.
Not for: choosing which run starts (`ordering` decides, the worker applies), or executing runs
(the pod does, `engine.pod`).

The channel is a socket pair with JSON lines: the worker sends {"op": "run", "flow_run": {...}};
the pod answers {"event": "ready"}, {"event": "load_failed", "error": ...},
{"event": "started", "flow_run_id": ...} and {"event": "finished", "flow_run_id": ...,
"state": ..., "message": ...}.

A pod whose worker was killed and that dies before its runs are done: `runtimes.orphans`.
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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import emit_event
from prefect.logging import get_logger

from prefect_pipedeploy.admission import Request, pod_key
from prefect_pipedeploy.exceptions import RuntimeStartError
from prefect_pipedeploy.iomapping import remove_execution_dirs
from prefect_pipedeploy.prefect_api.published import forget_pod_status, publish_pod_status
from prefect_pipedeploy.prefect_api.runs import (
    API_ANSWER_WAIT_S,
    requeue_run,
    runs_by_idempotency_key,
    when_api_answers,
)
from prefect_pipedeploy.runtimes.base import Runtime, RuntimeHandle
from prefect_pipedeploy.runtimes.docker import runtime_for
from prefect_pipedeploy.runtimes.orphans import orphan_notes_dir
from prefect_pipedeploy.runtimes.pod_channel import CONNECT_TIMEOUT_S, PodChannel, read_line
from prefect_pipedeploy.runtimes.pod_plan import RunningPod, backoff_s, plan_pods, pod_fingerprint
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import DeploymentSpec, spec_from_job_variables
from prefect_pipedeploy.status import PodStatus
from prefect_pipedeploy.worker.ram import RamAdmission, RssWatcher

logger = get_logger("prefect_pipedeploy.runtimes.low_latency")

LOG_TAIL_CHARS = 3500  # a Prefect variable holds at most 5000 characters
EXIT_RECYCLE = 75  # a pod that exits with this code asks to be re-created at once (engine.pod)
STOP_GRACE_S = 10.0  # beyond its drain grace: how long a stopped pod may take to exit


# ---------------------------------------------------------------------------------------------
# The pods of one worker
# ---------------------------------------------------------------------------------------------


@dataclass
class PodHandle:
    """One pod as its worker knows it."""

    deployment: DeploymentResponse
    spec: DeploymentSpec
    log_path: Path
    fingerprint: str = ""
    status: PodStatus = PodStatus.creation_pending
    message: str | None = None
    process: RuntimeHandle | None = None
    in_flight: set[UUID] = field(default_factory=set)
    started: set[UUID] = field(default_factory=set)  # runs of in_flight the pod began
    # idempotency keys of the runs the pod is creating for direct calls (told before each
    # create, until its "started" names the run): a pod that dies in between leaves a run
    # found by its key (`_end_in_flight`)
    creating: set[str] = field(default_factory=set)
    failures: int = 0
    last_heartbeat: float = 0.0
    kill_reason: str | None = None  # set when the worker kills the pod on purpose
    writer: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    # the worker's last look saw runs of this deployment it could not start yet: when a run
    # ends, look again at once (otherwise a run's end costs no API call)
    runs_held_back: bool = False
    # where the pod takes direct calls from the gateway ({host, port, key}, `engine.direct`)
    direct: dict[str, Any] | None = None
    direct_open: bool = True  # what the pod was last told (see `open_direct`)
    # why its container could not start (`RuntimeStartError`), until it comes up: the runs
    # waiting for it end Failed with this, as an elastic run whose container cannot start
    start_error: str | None = None

    @property
    def name(self) -> str:
        return self.deployment.name

    @property
    def is_up(self) -> bool:
        return self.status == PodStatus.up and self.writer is not None and not self.stopping

    @property
    def full(self) -> bool:
        """A parallel pod that is up with every slot taken (by the runs its worker handed it
        and the direct calls it took). A queue-mode pod's one slot is counted in the API
        across workers (`dispatch.count_active`), so it is never full here."""
        parallelism = self.spec.parallelism
        return self.is_up and parallelism > 1 and len(self.in_flight) >= parallelism

    def send(self, message: dict[str, Any]) -> bool:
        if self.writer is None or self.writer.is_closing():
            return False
        self.writer.write(json.dumps(message).encode() + b"\n")
        return True

    def update(self, deployment: DeploymentResponse) -> None:
        """Give the running pod its deployment's new settings (no restart needed)."""
        self.deployment = deployment
        self.spec = spec_from_job_variables(deployment.job_variables)
        self.send({"op": "update", "deployment": deployment.model_dump(mode="json")})

    def open_direct(self, open_: bool) -> None:
        """Tell the pod whether it may take direct calls: not while runs of its deployment wait
        for it, which they would pass (said only when it changes)."""
        if open_ != self.direct_open and self.send({"op": "direct", "open": open_}):
            self.direct_open = open_

    def send_run(self, flow_run: FlowRun) -> bool:
        """Hand a claimed run to the pod; False when it is going down (its channel closed)."""
        if self.stopping or not self.send(
            {"op": "run", "flow_run": flow_run.model_dump(mode="json")}
        ):
            return False
        self.in_flight.add(flow_run.id)
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
        on_finished: Callable[[UUID, UUID, str, bool], Awaitable[None]],
        admission: RamAdmission,
        environment: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        self.runtime = runtime
        self.environment = environment  # what every pod's environment adds (the worker's API)
        self.rss = rss
        self.admission = admission  # a pod holds its ram_request from start to stop
        self._waiting_for_ram: dict[UUID, str] = {}
        self._client = client  # makes a new client (a pod's events come from its own task)
        self.worker_name = worker_name
        self.state_dir = state_dir
        self.on_change = on_change  # wakes the worker: a slot freed, a pod came up
        # (deployment id, flow run id, final state type, has sealed inputs): a run of a pod ended
        self.on_finished = on_finished
        self.pods: dict[UUID, PodHandle] = {}

    # ---- reconciliation -----------------------------------------------------------------

    async def reconcile(self, deployments: list[DeploymentResponse]) -> None:
        """Start pods for new low-latency deployments, stop those gone, restart changed ones."""
        running = {i: RunningPod(p.fingerprint, p.deployment.updated) for i, p in self.pods.items()}
        plan = plan_pods(running, deployments)
        for deployment in plan.update:
            pod = self.pods[deployment.id]
            pod.update(deployment)
            logger.info(
                "pod %s: took its deployment's new settings without a restart",
                pod.name,
                extra={"action": "pod_updated"},
            )
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
            fingerprint=pod_fingerprint(deployment),
        )
        self.pods[deployment.id] = pod
        pod.task = asyncio.create_task(self._supervise(pod), name=f"pod-{deployment.name}")

    async def stop(self, deployment_id: UUID, reason: str, publish: bool = True) -> None:
        """Stop a pod and free its RAM. It drains first: SIGTERM makes it take no new run and
        give its running ones `drain_grace_s` to finish (it ends the others Crashed and
        flushes their logs); past that and a margin, it is killed, and what it still held ends
        Crashed (or, never started, goes back to the queue) with `reason`."""
        pod = self.pods.pop(deployment_id, None)
        if pod is None:
            return
        pod.stopping = True
        if pod.process is not None:
            pod.process.signal(signal.SIGTERM)
        if pod.task is not None:
            grace_s = get_settings().drain_grace_s + STOP_GRACE_S
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pod.task), grace_s)
            if pod.process is not None:
                pod.process.signal(signal.SIGKILL)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pod.task), STOP_GRACE_S)
            pod.task.cancel()
        await self._end_in_flight(pod, f"was stopped ({reason})", recreated=False)
        await self.admission.release(pod_key(deployment_id))  # its RAM is free once it is gone
        self._event(pod, "stopped", reason=reason)
        if publish:
            await self._publish(pod, PodStatus.down, f"stopped: {reason}")

    async def stop_all(self) -> None:
        """Stop every pod, all draining at once."""
        await asyncio.gather(*(self.stop(i, "its worker stopped") for i in list(self.pods)))

    # ---- one pod's life -------------------------------------------------------------------

    async def _supervise(self, pod: PodHandle) -> None:
        while not pod.stopping:
            started = time.monotonic()
            try:
                exit_explanation, load_error = await self._run_once(pod)
            except RuntimeStartError as exc:  # its container could not start: say why, retry
                pod.process = None
                pod.failures += 1
                pod.start_error = str(exc)
                await self._publish(pod, PodStatus.creation_failed, str(exc))
                self._event(pod, "load-failed", error=str(exc))
                self.on_change()  # the runs waiting for it end Failed, saying why
                await asyncio.sleep(backoff_s(pod.failures))
                continue
            except Exception as exc:  # a defect here must not leave the pod gone for good
                logger.exception("pod %s: its supervision failed; re-creating it", pod.name)
                await self._kill_quietly(pod)
                exit_explanation, load_error = (
                    f"lost its supervision ({type(exc).__name__}: {exc})",
                    None,
                )
            if pod.stopping:
                break
            await self._end_in_flight(pod, exit_explanation, recreated=True)
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
        """Start the pod process (in a container for `runtime: docker`) and serve its channel
        until it exits."""
        runtime = runtime_for(pod.spec, self.runtime)
        channel = PodChannel.open(runtime.shares_descriptors)
        try:
            return await self._serve_pod(pod, runtime, channel)
        finally:
            channel.close()

    async def _serve_pod(
        self, pod: PodHandle, runtime: Runtime, channel: PodChannel
    ) -> tuple[str, str | None]:
        notes = orphan_notes_dir()
        env = {
            **os.environ,
            **{
                k: str(v)
                for k, v in (pod.deployment.job_variables or {}).get("env", {}).items()
                if v is not None
            },
            **self.environment(),
        }
        if not runtime.shares_descriptors:
            notes.mkdir(parents=True, exist_ok=True)  # mounted: it must exist
        try:
            pod.process = await runtime.start(
                [
                    sys.executable,
                    "-m",
                    "prefect_pipedeploy.engine.pod",
                    "--deployment-id",
                    str(pod.deployment.id),
                    *channel.args,
                    "--drain-grace-s",
                    str(get_settings().drain_grace_s),
                    "--orphan-notes-dir",
                    str(notes),
                ],
                env=env,
                log_path=pod.log_path,
                pass_fds=channel.pass_fds,
                mounts=(*channel.mounts, notes) if channel.mounts else (),
            )
        finally:
            channel.started()
        process = pod.process
        ending = asyncio.ensure_future(process.wait())  # waited for once (a container goes then)
        key = pod_key(pod.deployment.id)
        self.rss.watch(
            key, process, pod.spec.ram_request_mib, pod.spec.ram_request, self._over_ram(pod)
        )
        await self._publish(pod, PodStatus.creation_pending, "importing the pipeline")
        load_error: str | None = None
        try:
            connected = await channel.connect(ending)
        except TimeoutError:
            connected = None
            pod.kill_reason = (
                f"did not connect to its worker within {CONNECT_TIMEOUT_S:g} s and was killed"
            )
            process.signal(signal.SIGKILL)
        if connected is not None:
            control, beats = connected
            reader, pod.writer = await asyncio.open_connection(sock=control)
            if process.pid is not None:  # what names its note if its worker dies
                pod.send({"op": "host_pid", "pid": process.pid})
            watchdog = asyncio.create_task(self._watch_heartbeats(pod, beats))
            try:
                while line := await read_line(reader):
                    message = json.loads(line)
                    load_error = await self._on_message(pod, message) or load_error
            finally:
                pod.writer.close()
                pod.writer = None
                watchdog.cancel()
        ended = await ending
        self.rss.unwatch(key)
        pod.process = None
        if ended.exit_code == EXIT_RECYCLE:
            return "recycled", None
        if pod.kill_reason is not None:
            reason, pod.kill_reason = pod.kill_reason, None
            return reason, load_error
        return ended.explanation, load_error

    async def _kill_quietly(self, pod: PodHandle) -> None:
        """Kill the pod's process, if any, and forget it (its supervision failed)."""
        process, pod.process = pod.process, None
        self.rss.unwatch(pod_key(pod.deployment.id))
        if process is not None:
            with contextlib.suppress(Exception):
                process.signal(signal.SIGKILL)
                await process.wait()

    async def _watch_heartbeats(self, pod: PodHandle, connection: socket.socket) -> None:
        """Kill a pod whose heartbeats stop (stopped with SIGSTOP, or deadlocked): its runs then
        end Crashed and it is re-created, like a pod that died."""
        beats, beats_end = await asyncio.open_connection(sock=connection)
        pod.last_heartbeat = 0.0  # watched from its first heartbeat (Python and imports first)
        timeout_s = get_settings().pod_heartbeat_timeout_s
        try:
            while pod.process is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    if await asyncio.wait_for(beats.read(64), timeout=1.0):
                        pod.last_heartbeat = time.monotonic()
                if beats.at_eof():
                    return  # the process is gone (its end is handled by the supervisor)
                if not pod.last_heartbeat:
                    continue
                silent_s = time.monotonic() - pod.last_heartbeat
                if silent_s > timeout_s and pod.kill_reason is None:
                    pod.kill_reason = (
                        f"stopped responding (no heartbeat for {silent_s:.0f} s: stopped, or "
                        "deadlocked) and was killed"
                    )
                    logger.warning(
                        "pod %s %s", pod.name, pod.kill_reason, extra={"action": "pod_unresponsive"}
                    )
                    pod.process.signal(signal.SIGKILL)
                    return
        finally:
            beats_end.close()

    def _over_ram(self, pod: PodHandle) -> Callable[[str], None]:
        def exceeded(message: str) -> None:
            pod.kill_reason = message
            logger.warning("pod %s %s", pod.name, message, extra={"action": "pod_oom_killed"})

        return exceeded

    async def _on_message(self, pod: PodHandle, message: dict[str, Any]) -> str | None:
        event = message.get("event")
        if event == "ready":
            pod.start_error = None
            direct = message.get("direct")
            pod.direct = direct if isinstance(direct, dict) else None
            pod.direct_open = True  # a new pod starts open
            await self._publish(pod, PodStatus.up, None)
            self._event(pod, "ready", pid=message.get("pid"))
            self.on_change()
        elif event == "creating":  # a direct call's run about to be made (`engine.direct`)
            pod.creating.add(str(message.get("idempotency_key")))
        elif event == "not_created":
            pod.creating.discard(str(message.get("idempotency_key")))
        elif event == "started":
            flow_run_id = UUID(message["flow_run_id"])
            if message.get("direct"):  # made by the pod for a gateway call: ours from now on
                pod.in_flight.add(flow_run_id)
                pod.creating.discard(str(message.get("idempotency_key")))
            pod.started.add(flow_run_id)
        elif event == "finished":
            flow_run_id = UUID(message["flow_run_id"])
            pod.in_flight.discard(flow_run_id)
            pod.started.discard(flow_run_id)
            if pod.runs_held_back:
                self.on_change()
            await self.on_finished(
                pod.deployment.id,
                flow_run_id,
                str(message.get("state")),
                bool(message.get("sealed")),
            )
        elif event == "load_failed":
            return str(message.get("error"))
        return None

    async def _end_in_flight(self, pod: PodHandle, explanation: str, recreated: bool) -> None:
        """What a pod that went down still held: runs that were running end Crashed, saying why;
        runs still Pending (never began) go back to the queue. Nothing waits on a pod that is
        gone. The runs it held include those it created for direct calls but died before
        naming (found by the idempotency keys it announced, `PodHandle.creating`).

        The Prefect API may be away (a server restart): then this waits for it, and tries
        again, until every run is ended (a pod being re-created) or for `API_ANSWER_WAIT_S` (a
        pod being stopped, so that a worker's stop does not hang on a server that is gone)."""
        if not pod.in_flight and not pod.creating:
            return
        then = "; the pod is being re-created" if recreated else ""
        crashed = f"The low-latency pod of deployment {pod.name!r} {explanation} while running this execution{then}."
        requeued = (
            f"Re-queued: the low-latency pod of deployment {pod.name!r} {explanation} before it "
            "began this execution"
        )
        give_up_at = None if recreated else time.monotonic() + API_ANSWER_WAIT_S
        ended: list[UUID] = []
        while pod.in_flight or pod.creating:
            try:
                async with self._client() as client:
                    await when_api_answers(client)
                    if pod.creating:  # runs made for direct calls the pod never named
                        pod.in_flight |= await runs_by_idempotency_key(
                            client, pod.deployment.id, pod.creating
                        )
                        pod.creating.clear()
                    for flow_run_id in list(pod.in_flight):
                        # by its state, not by the pod's "started": a run the pod began but
                        # that is still Pending (its inputs being fetched) never ran; before,
                        # it ended Crashed with run_count 0, so it was never retried
                        if not await requeue_run(client, flow_run_id, requeued, crashed):
                            ended.append(flow_run_id)
                        pod.in_flight.discard(flow_run_id)
                        remove_execution_dirs(str(flow_run_id))  # the dead pod could not
            except Exception as exc:
                if give_up_at is not None and time.monotonic() > give_up_at:
                    logger.error(
                        "pod %s: could not end the executions it held (%s: %s): %s",
                        pod.name,
                        type(exc).__name__,
                        exc,
                        ", ".join(map(str, pod.in_flight)),
                        extra={"action": "pod_runs_not_ended"},
                    )
                    break
                logger.warning(
                    "pod %s: could not end the executions it held yet (%s: %s); trying again",
                    pod.name,
                    type(exc).__name__,
                    exc,
                    extra={"action": "pod_runs_not_ended"},
                )
                await asyncio.sleep(1)
        pod.in_flight.clear()
        pod.started.clear()
        pod.creating.clear()
        self.on_change()
        for flow_run_id in ended:
            await self.on_finished(pod.deployment.id, flow_run_id, "CRASHED", False)

    # ---- reporting ------------------------------------------------------------------------

    async def _publish(self, pod: PodHandle, status: PodStatus, message: str | None) -> None:
        """Write the pod's status (and the tail of its output) where the SDK reads it."""
        pod.status, pod.message = status, message
        value = {
            "status": status.value,
            "message": message,
            "pid": pod.process.pid if pod.process is not None else None,
            "worker": self.worker_name,
            # where the gateway hands calls straight to the pod (only while it is up)
            "direct": pod.direct if status == PodStatus.up else None,
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
