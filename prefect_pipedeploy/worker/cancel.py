"""Cancel: the runs a user cancels (Prefect UI, `prefect flow-run cancel`, the SDK) end Cancelled.

For: `Cancels`, one per worker: it watches the runs this worker holds (elastic executions, runs
handed to its pods) for a Cancelling state, woken by Prefect's `prefect.flow-run.Cancelling`
events for the pool, with a poll as fallback, and stops each where it runs: an elastic
execution's process is killed (then `run` ends the run Cancelled and frees its RAM), a pod is
told to cancel the run (`engine.pod` says how each kind of pipeline stops). Not for: runs no worker
holds yet (Prefect ends a Scheduled run Cancelled itself, and a claim over Cancelled is refused, so
a queued execution cancelled before it starts never runs), nor what a pod does (`engine.pod`).

Prefect's own workers watch for Cancelling runs in `BaseWorker.start`, which the pipedeploy worker
replaces, and only kill runs that have not started yet (3.9.1); this covers started runs too.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING
from uuid import UUID

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.events import Event

from prefect_pipedeploy.prefect_api.runs import run_id_of
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.worker.rounds import Announced, Rounds

if TYPE_CHECKING:
    from prefect_pipedeploy.runtimes.base import RuntimeHandle
    from prefect_pipedeploy.worker.worker import PipeDeployWorker

#: The state events that mean "a run of the pool is asked to stop".
CANCEL_EVENTS = ("Cancelling",)

#: How long a cancelled execution's process has after SIGTERM (its engine stores its logs)
#: before it is killed.
STOP_GRACE_S = 5.0

#: Why a cancelled run ended, per where it ran (the state's message).
CANCELLED_PROCESS = "Cancelled on request: the execution's process was stopped"
CANCELLED_IN_POD = "Cancelled on request"


class Cancels:
    """The runs of one worker that were asked to stop, and how they are stopped."""

    def __init__(self, worker: PipeDeployWorker) -> None:
        self.worker = worker
        self.elastic: dict[UUID, str] = {}  # elastic runs being cancelled -> why
        self._sent: set[UUID] = set()  # runs whose pod was told to cancel them
        self._rounds = Rounds()
        self._announced = Announced(self._rounds)  # Cancelling by their event, not seen yet
        self._kills: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Look for Cancelling runs now instead of at the next poll."""
        self._rounds.wake()

    def on_event(self, event: Event) -> None:
        """A run of the pool is Cancelling (its event): look now, and again soon while the look
        does not see it (`rounds.Announced`), if this worker holds it."""
        run_id = run_id_of(event)
        if run_id is not None and run_id in self.held():
            self._announced.add(run_id)
        self.wake()

    def cancelled(self, flow_run_id: UUID) -> str | None:
        """Why an elastic run of this worker was cancelled (None: it was not)."""
        return self.elastic.get(flow_run_id)

    def forget(self, flow_run_id: UUID) -> None:
        """The run is over: stop tracking its cancel."""
        self.elastic.pop(flow_run_id, None)
        self._sent.discard(flow_run_id)

    def held(self) -> set[UUID]:
        """The runs this worker holds now: elastic ones (started or being submitted) and the
        ones its pods run."""
        held = set(self.worker.elastic_runs())
        for pod in self.worker.pods.pods.values():
            held |= pod.in_flight
        return held

    async def run(self) -> None:
        """Stop held runs that are Cancelling, every poll or when an event says so."""

        async def failed(exc: Exception) -> None:  # the next round tries again
            self.worker.worker_logger.warning("Could not look for cancelled runs: %s", exc)

        await self._rounds.run(get_settings().poll_seconds, self.sweep, failed)

    async def sweep(self) -> list[UUID]:
        """Stop the held runs that are Cancelling now; returns them."""
        held = self.held()
        if not held:
            self._announced.after_round(set())
            return []  # nothing held costs no API call
        cancelling = await self.worker.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=list(held)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            )
        )
        self._announced.after_round({flow_run.id for flow_run in cancelling})
        stopped = []
        for flow_run in cancelling:
            if self._stop(flow_run.id):
                stopped.append(flow_run.id)
                self.worker.get_flow_run_logger(flow_run).info(
                    "Cancel requested: stopping this execution", extra={"action": "run_cancel"}
                )
        return stopped

    def _stop(self, flow_run_id: UUID) -> bool:
        """Stop one held run where it runs; False if it was being stopped already."""
        if flow_run_id in self.elastic or flow_run_id in self._sent:
            return False
        for pod in self.worker.pods.pods.values():
            if flow_run_id in pod.in_flight:
                self._sent.add(flow_run_id)
                pod.send(
                    {"op": "cancel", "flow_run_id": str(flow_run_id), "reason": CANCELLED_IN_POD}
                )
                return True
        self.elastic[flow_run_id] = CANCELLED_PROCESS
        process = self.worker.elastic_process(flow_run_id)
        if process is not None:  # not started yet: `run` sees the cancel and never starts it
            kill = asyncio.create_task(stop_process(process))
            self._kills.add(kill)
            kill.add_done_callback(self._kills.discard)
        return True


async def stop_process(process: RuntimeHandle, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a process's tree or container (Prefect's engine then stores the run's log
    lines), SIGKILL it if it is still there after `grace_s`."""
    process.signal(signal.SIGTERM)
    deadline = anyio.current_time() + grace_s
    while anyio.current_time() < deadline:
        await anyio.sleep(0.1)
        if not process.alive():
            return
    process.signal(signal.SIGKILL)
