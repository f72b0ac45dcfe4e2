"""The low-latency pod: one long-lived process per deployment that runs flow runs in-process.

For: importing a deployment's pipeline once, then executing each flow run the worker hands it
through Prefect's flow engine, in this process: `async def` pipelines as tasks on the pod's
event loop, `def` pipelines each in a new thread, up to the deployment's parallelism. Module
state (a loaded model, a cache) persists between runs: that is the point of the mode, and also
its warning: parallel runs share that memory, so it must be safe to share.
Not for: deciding which run starts when (the worker does, see `runtimes.low_latency`), or restarting
itself (the worker re-creates a pod that died).

The worker starts it as
    python -m prefect_pipedeploy.engine.pod --deployment-id ID --control-fd FD \
        --heartbeat-fd FD2 --drain-grace-s SECONDS --orphan-notes-dir DIR
(in a container, `--control-socket PATH --heartbeat-socket PATH2` instead of the descriptors:
Unix sockets the worker listens on, in a folder mounted at the same path)
and talks to it over the socket FD with JSON lines: the worker sends {"op": "run", "flow_run":
{...}}, {"op": "update", "deployment": {...}} (new settings that need no restart: mappings,
token, timeout), {"op": "cancel", "flow_run_id": ..., "reason": ...}, {"op": "host_pid",
"pid": ...} (the pod's pid on the worker's machine, which names its orphan note) and {"op": "direct",
"open": bool} (whether runs of the deployment wait for the pod: direct calls are taken only when
none do); the pod answers {"event": "ready", "pid": ..., "direct": {host, port, key}},
{"event": "load_failed", "error": ...}, {"event": "started", "flow_run_id": ...} (a run took a
slot), with "direct": true and "idempotency_key": K for a run the pod created for a gateway
call (`engine.direct`), which it announced before its create with {"event": "creating",
"idempotency_key": K} (or withdrew, {"event": "not_created", ...}, when the create failed),
{"event": "finished", "flow_run_id": ..., "state": ..., "message": ..., "sealed": bool}.
Up to the deployment's parallelism runs execute at once, whichever way they came; a run the
worker hands over while every slot is taken waits for one. A thread writes a byte to FD2 every
second: the worker kills a pod whose heartbeats stop (stopped with SIGSTOP, or deadlocked).

Cancelling a run (its Cancelling state, seen by the worker): an `async def` run's task is
cancelled and the run ends Cancelled. A `def` run's thread cannot be stopped (CPython cannot kill
a thread): the run ends Cancelled at once and its engine proposes no more states, so its result
is discarded; in parallel mode the thread keeps its slot until it returns (the pod answers
"finished" then), in queue mode the pod exits with EXIT_RECYCLE once the run is ended, so the
thread goes with it and the worker re-creates the pod for the next run.

Stopping: on SIGTERM the pod drains: it takes no new run, lets the running ones finish within the
grace, ends the others Crashed saying why, flushes their logs, and exits. When the socket closes
(the worker is gone) it finishes its runs, however long they take, and exits; meanwhile it keeps
a note of the runs it still holds in `--orphan-notes-dir` (`<pid>.json`, removed when it leaves),
so that if it is killed too, the worker that finds it dead ends them (`runtimes.low_latency`).
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import collections
import contextlib
import contextvars
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.context import AsyncClientContext, SyncClientContext
from prefect.logging import get_logger
from prefect.logging.loggers import print_as_log
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Cancelled

from prefect_pipedeploy._compat import (
    discard_engine_states,
    forget_discarded_states,
    shared_suspension_observer,
    watch_suspension,
)
from prefect_pipedeploy.engine.direct import DirectDoor
from prefect_pipedeploy.engine.flow_engine import run_pipeline_async, run_pipeline_sync
from prefect_pipedeploy.engine.loader import load_deployment_pipeline, load_error
from prefect_pipedeploy.engine.runlogs import (
    fail_after_logs,
    flush_all_run_logs,
    flush_run_logs,
)
from prefect_pipedeploy.engine.runner import PipelineRunner
from prefect_pipedeploy.iomapping import remove_execution_dirs
from prefect_pipedeploy.prefect_api.runs import cancel_run, crash_run, when_api_answers
from prefect_pipedeploy.prefect_api.sealed import sealed_keys
from prefect_pipedeploy.prefect_api.writegate import install_write_gate
from prefect_pipedeploy.runtimes.orphans import OrphanNote
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import DeploymentSpec, spec_from_job_variables

logger = get_logger("prefect_pipedeploy.engine.pod")


# How many `def` runs may be abandoned after their timeout before the pod asks to be recycled.
MAX_ABANDONED_THREADS = 4


EXIT_RECYCLE = 75  # the worker re-creates a pod that exits with this code, without back-off
HEARTBEAT_S = 1.0  # how often the pod tells its worker it is alive


def run_in_new_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run `fn` in a new thread; the returned future resolves on this loop when it returns.

    Cancelling the future does not stop the thread (CPython cannot kill a thread): it is
    abandoned and its result ignored.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()  # the pod's Prefect settings travel with the run

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result = context.run(fn)
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class Pod:
    """The pod's state: its pipeline, its runs in flight, and the channel to its worker."""

    def __init__(
        self,
        deployment: DeploymentResponse,
        spec: DeploymentSpec,
        flow: Flow[..., Any],
        client: PrefectClient,
        writer: asyncio.StreamWriter,
        suspensions: Any = None,
    ) -> None:
        self.deployment = deployment
        self.spec = spec
        self.runner = PipelineRunner(flow, spec)
        self.client = client
        self.writer = writer
        self.suspensions = suspensions
        self.runs: dict[UUID, asyncio.Task[dict[str, Any]]] = {}
        # an async run's engine, as a task of its own (cancelling it stops the run)
        self.executions: dict[UUID, asyncio.Future[Any]] = {}
        self.threads: set[UUID] = set()  # `def` runs whose thread has started
        self.cancelled: dict[UUID, str] = {}  # run -> why it was cancelled
        self.abandoned_threads = 0
        self.draining = False
        # Slots: up to the deployment's parallelism runs execute at once, whichever way they
        # came (the worker's hand-off or a direct call, `engine.direct`). A run the worker
        # hands over while every slot is taken waits for one, first come first served.
        self.holding = 0
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # the worker says whether runs of this deployment wait for the pod (its queue):
        # direct calls are taken only when none do, so they never pass them
        self.direct_open = True
        self.orphan_note: Path | None = None  # written once the worker is gone
        # this process's pid as its worker's machine sees it (in a container, the worker says)
        self.host_pid = os.getpid()
        self._background: set[asyncio.Task[None]] = set()

    def note_orphaned_runs(self) -> None:
        """Write (or, with none left, remove) the note of the runs this orphaned pod holds: a
        worker that finds the pod dead ends them, as its own worker would have."""
        if self.orphan_note is None:
            return
        if not self.runs:
            with contextlib.suppress(OSError):
                self.orphan_note.unlink(missing_ok=True)
            return
        note = OrphanNote(self.host_pid, self.deployment.id, self.deployment.name, tuple(self.runs))
        try:
            note.write(self.orphan_note)  # whole or absent, whenever the pod is killed
        except OSError as exc:  # the runs go on; only their end after a kill is at stake
            logger.warning("Could not note the runs this orphaned pod holds: %s", exc)

    def update(self, deployment: DeploymentResponse) -> None:
        """Take the deployment's new settings for the next runs (no restart needed)."""
        self.deployment = deployment
        self.spec = spec_from_job_variables(deployment.job_variables)
        self.runner.spec = self.spec

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(json.dumps(message).encode() + b"\n")

    def start_run(self, flow_run: FlowRun) -> None:
        if flow_run.id in self.runs or self.draining:
            return  # a draining pod takes nothing new; the worker re-queues what it sent
        self.runs[flow_run.id] = asyncio.create_task(self._run(flow_run))

    def direct_refusal(self) -> str | None:
        """Why a direct call cannot start now (it then takes the worker's path); None: it can."""
        if self.draining:
            return "the pod is stopping"
        if not self.direct_open or self._slot_waiters:
            return "executions of this deployment wait for the pod"
        if self.holding >= self.spec.parallelism:
            return "every slot of the pod is taken"
        return None

    def take_slot_now(self) -> bool:
        """Take a slot for a direct call if one is free and nothing waits (see `direct_refusal`)."""
        if self.direct_refusal() is not None:
            return False
        self.holding += 1
        return True

    def release_slot(self) -> None:
        self.holding -= 1
        while self._slot_waiters and self.holding < self.spec.parallelism:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self.holding += 1
                waiter.set_result(None)

    async def _take_slot(self) -> None:
        """Wait for a slot (FIFO among the runs the worker handed over)."""
        if not self._slot_waiters and self.holding < self.spec.parallelism:
            self.holding += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_slot()  # given a slot as it was cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            raise

    def start_direct_run(self, flow_run: FlowRun) -> asyncio.Task[dict[str, Any]]:
        """Run a direct call's run (created Running, its slot taken): the worker hears of it
        as of a run it handed over, so a pod that dies under it ends it Crashed."""
        task = asyncio.create_task(self._run(flow_run, slot_taken=True, direct=True))
        self.runs[flow_run.id] = task
        return task

    def cancel_run(self, flow_run_id: UUID, reason: str) -> None:
        """Stop a run the worker was asked to cancel (see the module's docstring); a run this pod
        does not hold (ended meanwhile) is left alone, and one still reading its inputs never
        starts (`_run`)."""
        if flow_run_id not in self.runs or flow_run_id in self.cancelled:
            return
        self.cancelled[flow_run_id] = reason
        discard_engine_states(flow_run_id, Cancelled(message=reason))
        execution = self.executions.get(flow_run_id)
        if execution is not None:  # an async run: its task stops, `_run` ends the run
            execution.cancel()
        elif flow_run_id in self.threads:  # a thread: the run ends now, the thread runs on
            task = asyncio.create_task(self._end_cancelled(flow_run_id, reason))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _end_cancelled(self, flow_run_id: UUID, reason: str) -> None:
        """Mark a cancelled run Cancelled once its lines so far are stored; in queue mode, then
        leave (the worker re-creates the pod): the run's thread cannot be stopped otherwise."""
        await flush_run_logs(self.client, flow_run_id)
        await cancel_run(self.client, flow_run_id, reason)
        if self.spec.enable_parallel_executions:
            return  # the thread keeps its slot; `_run` answers "finished" when it returns
        logger.warning(
            "Run %s was cancelled while its thread runs; recycling the pod to stop it",
            flow_run_id,
            extra={"action": "run_cancelled_recycle"},
        )
        self.send(
            {
                "event": "finished",
                "flow_run_id": str(flow_run_id),
                "state": "CANCELLED",
                "message": reason,
            }
        )
        await self.writer.drain()
        remove_execution_dirs(str(flow_run_id))  # what its `_run` would have removed
        flush_all_run_logs()  # os._exit skips the at-exit flush
        os._exit(EXIT_RECYCLE)

    async def drain(self, grace_s: float | None, reason: str) -> None:
        """Take no new run; let the running ones finish (within `grace_s`, if given); end the
        others Crashed saying why; flush the logs of every run."""
        self.draining = True
        if self.runs:
            await asyncio.wait(list(self.runs.values()), timeout=grace_s)
        for flow_run_id, task in list(self.runs.items()):
            message = (
                f"The low-latency pod of deployment {self.deployment.name!r} was stopped "
                f"({reason}) and this execution did not finish within the {grace_s:g} s "
                "it was given; run it again"
            )
            logger.warning("Run %s: %s", flow_run_id, message, extra={"action": "run_drained"})
            await flush_run_logs(self.client, flow_run_id)  # its logs complete at final
            await crash_run(self.client, flow_run_id, message)
            task.cancel()
            self.send(
                {
                    "event": "finished",
                    "flow_run_id": str(flow_run_id),
                    "state": "CRASHED",
                    "message": message,
                }
            )
        await asyncio.to_thread(flush_all_run_logs)

    async def _run(
        self, flow_run: FlowRun, slot_taken: bool = False, direct: bool = False
    ) -> dict[str, Any]:
        """Run `flow_run` to its final state (a slot taken first); its outcome, as the worker
        and a direct caller hear it: state, message, endpoint outputs and stored outputs."""
        state_name, message = "Unknown", None
        endpoint_outputs: dict[str, Any] = {}
        stored_outputs: dict[str, str] = {}
        if not slot_taken:
            await self._take_slot()
        started: dict[str, Any] = {"event": "started", "flow_run_id": str(flow_run.id)}
        if direct:  # the key the worker was told before the create (`engine.direct`)
            started.update(direct=True, idempotency_key=flow_run.idempotency_key)
        self.send(started)
        try:
            parameters = await self.runner.prepare(self.client, flow_run)
            if parameters is None:
                state_name, message = "FAILED", "its inputs could not be resolved"
            elif flow_run.id in self.cancelled:  # while its inputs were read: it never runs
                raise asyncio.CancelledError
            else:
                state = await self._execute_with_timeout(flow_run, parameters)
                state_name, message = state.type.value, state.message
                if flow_run.id in self.cancelled:  # a thread that returned after its cancel
                    state_name, message = "CANCELLED", self.cancelled[flow_run.id]
        except asyncio.CancelledError:
            if flow_run.id not in self.cancelled:
                raise  # the pod itself is going down
            state_name, message = "CANCELLED", self.cancelled[flow_run.id]
            await flush_run_logs(self.client, flow_run.id)
            await cancel_run(self.client, flow_run.id, message)
        except TimeoutError:
            timeout = self.spec.execution_timeout_s
            message = f"Execution timed out after {timeout:g} s (execution_timeout_s={timeout:g})"
            # an async run's engine, cancelled, has just ended it Crashed: the timeout is why
            await fail_after_logs(self.client, flow_run.id, message, over_crash=True)
            state_name = "FAILED"
        except Exception as exc:  # the engine itself failed: report on the run, keep the pod
            message = f"The pod could not execute the run: {type(exc).__name__}: {exc}"
            logger.exception(message)
            await fail_after_logs(self.client, flow_run.id, message)
            state_name = "FAILED"
        finally:
            self.release_slot()
            self.runs.pop(flow_run.id, None)
            self.executions.pop(flow_run.id, None)
            self.threads.discard(flow_run.id)
            self.cancelled.pop(flow_run.id, None)
            forget_discarded_states(flow_run.id)
            self.note_orphaned_runs()
            endpoint_outputs, stored_outputs = self.runner.take_outputs(flow_run.id)
            self.runner.cleanup(flow_run)
            # what Prefect logged after the final state ("Finished in state ..."), before the
            # worker hears the run is over
            await flush_run_logs(self.client, flow_run.id)
        outcome = {
            "event": "finished",
            "flow_run_id": str(flow_run.id),
            "state": state_name,
            "message": message,
            "sealed": bool(sealed_keys(flow_run.parameters or {})),
        }
        self.send(outcome)
        await self.writer.drain()
        if self.abandoned_threads >= MAX_ABANDONED_THREADS and not self.runs:
            logger.warning(
                "%d timed-out threads are still running; recycling the pod", self.abandoned_threads
            )
            flush_all_run_logs()  # os._exit skips the at-exit flush
            os._exit(EXIT_RECYCLE)
        return {**outcome, "outputs": endpoint_outputs, "stored": stored_outputs}

    async def _execute_with_timeout(self, flow_run: FlowRun, parameters: dict[str, Any]) -> Any:
        timeout = self.spec.execution_timeout_s
        flow = self.runner.flow
        shared = self.suspensions is not None
        watching = (
            watch_suspension(self.suspensions, flow_run.id)
            if self.suspensions is not None
            else contextlib.nullcontext()
        )
        with watching:
            if flow.isasync:
                run = run_pipeline_async(flow, flow_run, parameters, shared_observer=shared)
                execution = asyncio.ensure_future(run)
                self.executions[flow_run.id] = execution
                return await asyncio.wait_for(execution, timeout)
            future = run_in_new_thread(
                lambda: run_pipeline_sync(flow, flow_run, parameters, shared_observer=shared),
                name=f"run-{flow_run.id}",
            )
            self.threads.add(flow_run.id)
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                self.abandoned_threads += 1
                raise


async def serve(
    deployment_id: UUID,
    control: socket.socket,
    drain_grace_s: float,
    orphan_notes_dir: Path | None = None,
) -> int:
    reader, writer = await asyncio.open_connection(sock=control)
    # One client of each kind for the pod's lifetime: Prefect's engine takes the client of the
    # current client context, so runs reuse these instead of building (and CSRF-probing) a new
    # one per run. Async runs are tasks on this loop; `def` runs get a copy of this context in
    # their thread and share the sync client, an httpx.Client, which is thread-safe. Entering
    # the sync one checks the API version once, blocking the loop before the pod is ready.
    async with AsyncClientContext.get_or_create() as client_context:
        # a pod (re-)created while the server restarts waits for it; entering the sync client
        # checks the API version, which would fail at once
        await when_api_answers(client_context.client)
        with SyncClientContext.get_or_create() as sync_context:
            # on a server that refuses creates (SQLite), the pod's creates and its runs' writes
            # take turns instead of refusing each other (`writegate`)
            install_write_gate(
                client_context.client, sync_context.client, get_settings().pod_write_gate
            )
            return await _serve(
                deployment_id,
                client_context.client,
                reader,
                writer,
                drain_grace_s,
                orphan_notes_dir,
            )


async def _serve(
    deployment_id: UUID,
    client: PrefectClient,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    drain_grace_s: float,
    orphan_notes_dir: Path | None = None,
) -> int:
    def send(message: dict[str, Any]) -> None:
        writer.write(json.dumps(message).encode() + b"\n")

    deployment = await client.read_deployment(deployment_id)
    spec = spec_from_job_variables(deployment.job_variables)
    try:
        flow = await load_deployment_pipeline(deployment, log=logger.info)
    except Exception as exc:
        error = load_error(exc)
        logger.error("Could not load the pipeline of %s: %s", deployment.name, error)
        send({"event": "load_failed", "error": error})
        await writer.drain()
        return 3
    # One suspension observer (one websocket) for all the pod's runs; Prefect's engine would
    # start one per run.
    async with shared_suspension_observer() as suspensions:
        pod = Pod(deployment, spec, flow, client, writer, suspensions)
        await pod.runner.resolve_result_defaults(client)
        door = DirectDoor(pod)
        direct = await door.open()
        logger.info(
            "Pod of %s ready (pid %d; direct calls on 127.0.0.1:%d)",
            deployment.name,
            os.getpid(),
            door.port,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        send({"event": "ready", "pid": os.getpid(), "direct": direct})
        await writer.drain()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        commands = asyncio.create_task(_follow(pod, reader))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({commands, stopped}, return_when=asyncio.FIRST_COMPLETED)
        commands.cancel()
        stopped.cancel()
        await door.close()
        if stop.is_set():
            await pod.drain(drain_grace_s, "its worker stopped it")
        else:  # the worker went away: finish what runs, however long, then leave
            if orphan_notes_dir is not None:
                pod.orphan_note = orphan_notes_dir / f"{pod.host_pid}.json"
                pod.note_orphaned_runs()
            await pod.drain(None, "its worker is gone")
            pod.note_orphaned_runs()  # none left: the note goes
        with contextlib.suppress(ConnectionError):
            await writer.drain()
    return 0


async def _follow(pod: Pod, reader: asyncio.StreamReader) -> None:
    """Carry out the worker's commands until it closes the channel."""
    while line := await reader.readline():
        command = json.loads(line)
        if command.get("op") == "run":
            pod.start_run(FlowRun.model_validate(command["flow_run"]))
        elif command.get("op") == "update":
            pod.update(DeploymentResponse.model_validate(command["deployment"]))
        elif command.get("op") == "direct":
            pod.direct_open = bool(command.get("open"))
        elif command.get("op") == "cancel":
            pod.cancel_run(UUID(command["flow_run_id"]), str(command["reason"]))
        elif command.get("op") == "host_pid":
            pod.host_pid = int(command["pid"])


def _heartbeats(fd: int) -> None:
    """Write a byte to `fd` every `HEARTBEAT_S` from a thread of its own, for the worker to see
    that the pod is alive even while its event loop is busy; stop when the worker is gone."""

    def beat() -> None:
        while True:
            try:
                os.write(fd, b".")
            except OSError:
                return
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="pod-heartbeat", daemon=True).start()


def _connect(path: Path) -> socket.socket:
    """A connection to the worker's socket at `path` (a pod in a container: the worker's
    descriptors do not reach it, a folder of sockets mounted at the same path does)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(str(path))
    return connection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefect_pipedeploy.engine.pod")
    parser.add_argument("--deployment-id", required=True, type=UUID)
    control_from = parser.add_mutually_exclusive_group(required=True)
    control_from.add_argument("--control-fd", type=int)
    control_from.add_argument("--control-socket", type=Path)
    beats_to = parser.add_mutually_exclusive_group()
    beats_to.add_argument("--heartbeat-fd", type=int, default=None)
    beats_to.add_argument("--heartbeat-socket", type=Path, default=None)
    parser.add_argument("--drain-grace-s", type=float, default=30.0)
    parser.add_argument("--orphan-notes-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.heartbeat_socket is not None:
        _heartbeats(_connect(args.heartbeat_socket).detach())
    elif args.heartbeat_fd is not None:
        _heartbeats(args.heartbeat_fd)
    # Installed once for the pod's lifetime: print routes by run context, so concurrent runs
    # never swap builtins.print under each other.
    builtins.print = print_as_log
    control = (
        socket.socket(fileno=args.control_fd)
        if args.control_fd is not None
        else _connect(args.control_socket)
    )
    # Liveness of runs is the pod's (its worker watches the process): no heartbeat thread,
    # which would add about a second to every `def` run.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return asyncio.run(
            serve(args.deployment_id, control, args.drain_grace_s, args.orphan_notes_dir)
        )


if __name__ == "__main__":
    sys.exit(main())
