"""The worker's side of low-latency pods: start, watch, feed, re-create and stop them.

For: one `PodHandle` per low-latency deployment of the worker's pool: its process
(`python -m prefect_pipedeploy.engine.pod`), its control channel, its runs in flight, its status as
the SDK sees it (a Prefect variable) and its state changes as Prefect events
(`prefect-pipedeploy.pod.ready`, `.crashed`, `.restarted`, `.stopped`, `.load-failed`).
Not for: choosing which run starts (`ordering` decides, the worker applies), or executing
runs (the pod does).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import emit_event
from prefect.exceptions import Abort, ObjectNotFound
from prefect.logging import get_logger
from prefect.states import Crashed
from prefect.utilities.engine import propose_state

from prefect_pipedeploy.admission import Request, pod_key
from prefect_pipedeploy.prefect_api.published import status_variable_name
from prefect_pipedeploy.runtimes.process import explain_exit, kill_process_tree, tree_rss_mib
from prefect_pipedeploy.spec import DeploymentSpec, spec_from_job_variables
from prefect_pipedeploy.worker.ram import RamAdmission, ram_exceeded

logger = get_logger("prefect_pipedeploy.runtimes.low_latency")


LOG_TAIL_CHARS = 3500  # a Prefect variable holds at most 5000 characters


EXIT_RECYCLE = 75  # see pod.py


def backoff_s(failures: int) -> float:
    """Seconds to wait before re-creating a pod after `failures` failures in a row."""
    return float(min(30, 2 ** max(0, failures - 1)))


@dataclass
class PodHandle:
    """One pod as its worker knows it."""

    deployment: DeploymentResponse
    spec: DeploymentSpec
    log_path: Path
    status: str = "creation_pending"
    message: str | None = None
    pid: int | None = None
    in_flight: set[UUID] = field(default_factory=set)
    failures: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    kill_reason: str | None = None  # set when the worker kills the pod on purpose
    peak_rss_mib: float = 0.0
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
    def free_slots(self) -> int:
        return self.spec.parallelism - len(self.in_flight) if self.status == "up" else 0

    def send_run(self, flow_run: FlowRun) -> None:
        assert self.writer is not None
        self.in_flight.add(flow_run.id)
        message = {"op": "run", "flow_run": flow_run.model_dump(mode="json")}
        self.writer.write(json.dumps(message).encode() + b"\n")


class PodSupervisor:
    """Keeps one pod per low-latency deployment alive for a worker."""

    def __init__(
        self,
        client: Callable[[], PrefectClient],
        worker_name: str,
        state_dir: Path,
        on_change: Callable[[], None],
        on_finished: Callable[[UUID, UUID, str], Awaitable[None]],
        admission: RamAdmission,
    ) -> None:
        self.admission = admission  # a pod holds its ram_request from start to stop
        self._waiting_for_ram: dict[UUID, str] = {}
        self._client = client
        self.worker_name = worker_name
        self.state_dir = state_dir
        self.on_change = on_change  # wakes the worker: a slot freed, a pod came up
        # (deployment id, flow run id, final state type): a run of a pod ended
        self.on_finished = on_finished
        self.pods: dict[UUID, PodHandle] = {}

    # ---- reconciliation -----------------------------------------------------------------

    async def reconcile(self, deployments: list[DeploymentResponse]) -> None:
        """Start pods for new low-latency deployments, stop those gone, restart changed ones."""
        wanted: dict[UUID, DeploymentResponse] = {}
        for deployment in deployments:
            try:
                spec = spec_from_job_variables(deployment.job_variables)
            except Exception:
                continue  # an invalid spec: its runs fail with the reason (see worker)
            if spec.mode == "low_latency" and not deployment.paused:
                wanted[deployment.id] = deployment
        existing = {deployment.id for deployment in deployments}
        for deployment_id in list(self.pods):
            pod = self.pods[deployment_id]
            current = wanted.get(deployment_id)
            if deployment_id not in existing:
                await self.stop(deployment_id, "its deployment was deleted", publish=False)
                await self._forget(deployment_id)
            elif current is None:
                await self.stop(deployment_id, "its deployment was disabled or changed mode")
            elif current.updated != pod.deployment.updated:
                await self.stop(deployment_id, "its deployment was updated", publish=False)
        new = sorted(
            (d for d in wanted.values() if d.id not in self.pods), key=lambda d: d.created or 0
        )
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
                await self._publish(waiting, "creation_pending", decision.reason)

    def _start(self, deployment: DeploymentResponse) -> None:
        pod = PodHandle(
            deployment=deployment,
            spec=spec_from_job_variables(deployment.job_variables),
            log_path=self.state_dir / "pods" / f"{deployment.name}-{deployment.id.hex[:8]}.log",
        )
        pod.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pods[deployment.id] = pod
        pod.task = asyncio.create_task(self._supervise(pod), name=f"pod-{deployment.name}")

    async def stop(self, deployment_id: UUID, reason: str, publish: bool = True) -> None:
        pod = self.pods.pop(deployment_id, None)
        if pod is None:
            return
        pod.stopping = True
        if pod.pid is not None:
            kill_process_tree(pod.pid, 15)
        if pod.task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pod.task), 10)
            pod.task.cancel()
        if pod.pid is not None:
            kill_process_tree(pod.pid, 9)
        await self.admission.release(pod_key(deployment_id))  # its RAM is free once it is gone
        self._event(pod, "stopped", reason=reason)
        if publish:
            await self._publish(pod, "down", f"stopped: {reason}")

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
                    pod, "creation_failed", f"the pipeline failed to load: {load_error}"
                )
                self._event(pod, "load-failed", error=load_error)
            else:
                if time.monotonic() - started > 60:
                    pod.failures = 0
                pod.failures += 1
                await self._publish(pod, "down_retrying", f"the pod {exit_explanation}")
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
        log = open(pod.log_path, "ab")  # noqa: SIM115 - the child keeps its own descriptor
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "prefect_pipedeploy.engine.pod",
                "--deployment-id",
                str(pod.deployment.id),
                "--control-fd",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
            theirs.close()
        pod.pid = process.pid
        pod.ready.clear()
        await self._publish(pod, "creation_pending", "importing the pipeline")
        reader, pod.writer = await asyncio.open_connection(sock=ours)
        load_error: str | None = None
        try:
            while line := await reader.readline():
                message = json.loads(line)
                load_error = await self._on_message(pod, message) or load_error
        finally:
            pod.writer.close()
            pod.writer = None
            pod.ready.clear()
        code = await process.wait()
        pod.pid = None
        if code == EXIT_RECYCLE:
            return "recycled", None
        if pod.kill_reason is not None:
            reason, pod.kill_reason = pod.kill_reason, None
            return reason, load_error
        return explain_exit(code), load_error

    async def _on_message(self, pod: PodHandle, message: dict[str, Any]) -> str | None:
        event = message.get("event")
        if event == "ready":
            pod.ready.set()
            await self._publish(pod, "up", None)
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
                with contextlib.suppress(Abort, ObjectNotFound):
                    await propose_state(client, Crashed(message=message), flow_run_id=flow_run_id)
        pod.in_flight.clear()
        self.on_change()
        for flow_run_id in crashed:
            await self.on_finished(pod.deployment.id, flow_run_id, "CRASHED")

    async def watch_memory(self, interval_s: float = 0.5) -> None:
        """Stop any pod whose process tree goes over its ram_request, like an OOM kill."""
        while True:
            for pod in list(self.pods.values()):
                if pod.pid is None:
                    continue
                rss = tree_rss_mib(pod.pid)
                pod.peak_rss_mib = max(pod.peak_rss_mib, rss)
                if rss > pod.spec.ram_request_mib and pod.kill_reason is None:
                    pod.kill_reason = ram_exceeded(pod.spec.ram_request, rss)
                    logger.warning(
                        "pod %s %s", pod.name, pod.kill_reason, extra={"action": "pod_oom_killed"}
                    )
                    kill_process_tree(pod.pid, 9)
            await asyncio.sleep(interval_s)

    # ---- reporting ------------------------------------------------------------------------

    async def _publish(self, pod: PodHandle, status: str, message: str | None) -> None:
        """Write the pod's status (and the tail of its output) where the SDK reads it."""
        pod.status, pod.message = status, message
        value = {
            "status": status,
            "message": message,
            "pid": pod.pid,
            "worker": self.worker_name,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "log_tail": _tail(pod.log_path, LOG_TAIL_CHARS),
        }
        name = status_variable_name(pod.deployment.id, self.worker_name)
        try:
            async with self._client() as client:
                try:
                    await client.update_variable(VariableUpdate(name=name, value=value))
                except (ObjectNotFound, httpx.HTTPStatusError) as exc:
                    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code != 404:
                        raise
                    await client.create_variable(VariableCreate(name=name, value=value))
        except Exception as exc:  # status is informative; the pod keeps running
            logger.warning("Could not publish the status of pod %s: %s", pod.name, exc)

    async def _forget(self, deployment_id: UUID) -> None:
        """Delete this worker's status of a deleted deployment's pod."""
        try:
            async with self._client() as client:
                await client.delete_variable_by_name(
                    status_variable_name(deployment_id, self.worker_name)
                )
        except Exception as exc:  # ObjectNotFound: the SDK deleted it already
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
