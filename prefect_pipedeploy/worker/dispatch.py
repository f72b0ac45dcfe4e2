"""Dispatch: which ready runs go where, which start now, and how a failed run is retried.

For: the worker's decisions as values (`split_ready_runs`: elastic runs, runs for a pod, runs
whose pod is not known yet; `pod_heads`: the runs a pod starts now within its parallelism;
`ram_requests`: elastic runs as FIFO RAM requests; `deployment_of` a run's event) and the API
calls they lead to (`claim` a run, signed by its `Claimer`; `count_active` runs of a queue-mode
deployment, `queue_retry` a failed run, `say_waiting` why a run waits). Not for: the order
rules themselves (`ordering`), RAM (`admission`, `worker.ram`).
"""

from __future__ import annotations

import ast
import datetime
import os
import re
import socket
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psutil
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.schemas.events import Event
from prefect.exceptions import Abort
from prefect.states import Pending, Scheduled
from prefect.utilities.engine import propose_state

from prefect_pipedeploy.admission import Request, run_key
from prefect_pipedeploy.ordering import RetryDecision, WaitingRun, decide_retry, runs_to_start
from prefect_pipedeploy.spec import Mode, spec_from_job_variables

#: Active states: a run in one of these holds its deployment's queue slot.
ACTIVE = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)


def deployment_of(event: Event) -> UUID | None:
    """The deployment a flow-run event names among its related resources, if any."""
    for related in event.related:
        kind, _, ident = related.id.rpartition(".")
        if kind == "prefect.deployment":
            try:
                return UUID(ident)
            except ValueError:
                return None
    return None


def plain_utc(moment: datetime.datetime) -> datetime.datetime:
    """A standard-library UTC datetime (Prefect's own type does not mix with timedelta)."""
    return datetime.datetime.fromisoformat(moment.isoformat()).astimezone(datetime.timezone.utc)


def waiting_run(flow_run: FlowRun) -> WaitingRun:
    """A Scheduled run as the ordering sees it: its place is its scheduled time."""
    details = flow_run.state.state_details if flow_run.state else None
    expected = (
        (details.scheduled_time if details else None)
        or flow_run.next_scheduled_start_time
        or flow_run.expected_start_time
        or flow_run.created
    )
    if flow_run.created is None or expected is None:
        raise ValueError(f"flow run {flow_run.id} has no creation time; it cannot be ordered")
    return WaitingRun(
        id=str(flow_run.id),
        expected_start=plain_utc(expected),
        created=plain_utc(flow_run.created),
        attempt=flow_run.run_count + 1,
    )


# ---------------------------------------------------------------------------------------------
# Decisions (pure)
# ---------------------------------------------------------------------------------------------


@dataclass
class ReadyRuns:
    """The ready runs of a pool, by where they go."""

    elastic: list[FlowRun] = field(default_factory=list)
    """Runs of elastic deployments: each gets a fresh process, once its RAM is admitted."""
    to_pods: dict[UUID, list[FlowRun]] = field(default_factory=dict)
    """Runs of low-latency deployments whose pod this worker runs, by deployment."""
    waiting_for_pod: list[FlowRun] = field(default_factory=list)
    """Runs of low-latency deployments whose pod is not started yet (the pod loop starts it)."""
    unknown: list[FlowRun] = field(default_factory=list)
    """Runs of deployments that are gone or have invalid settings (left to fail elsewhere)."""


def split_ready_runs(
    flow_runs: Sequence[FlowRun],
    pods: Container[UUID],
    modes: Mapping[UUID, str | None],
    submitting: Container[UUID],
) -> ReadyRuns:
    """Sort ready runs by where they go. `pods`: deployments this worker has a pod for;
    `modes`: each deployment's mode (None when it is gone or invalid); `submitting`: runs this
    worker is submitting already (skipped)."""
    ready = ReadyRuns()
    for flow_run in flow_runs:
        if flow_run.id in submitting or flow_run.deployment_id is None:
            continue
        deployment_id = flow_run.deployment_id
        if deployment_id in pods:
            ready.to_pods.setdefault(deployment_id, []).append(flow_run)
        elif modes.get(deployment_id) == Mode.elastic.value:
            ready.elastic.append(flow_run)
        elif modes.get(deployment_id) == Mode.low_latency.value:
            ready.waiting_for_pod.append(flow_run)
        else:
            ready.unknown.append(flow_run)
    return ready


def pod_heads(
    flow_runs: Sequence[FlowRun], running: int, parallelism: int, now: datetime.datetime
) -> tuple[list[FlowRun], bool]:
    """The runs a pod starts now (FIFO, within `parallelism` with `running` already running),
    and whether some ready runs are held back."""
    by_id = {str(run.id): run for run in flow_runs}
    waiting = [waiting_run(run) for run in flow_runs if run.created is not None]
    heads = runs_to_start(waiting, running, parallelism, now=now)
    return [by_id[head.id] for head in heads], len(heads) < len(waiting)


def ram_requests(candidates: Sequence[tuple[FlowRun, str, int]]) -> list[Request]:
    """Elastic runs (run, deployment name, MiB) as RAM requests, in FIFO order."""
    ordered = sorted(candidates, key=lambda c: waiting_run(c[0]).sort_key())
    return [
        Request(
            key=run_key(flow_run.id),
            mib=mib,
            label=f"execution {str(flow_run.id)[:8]} of {name}",
            requested_at=waiting_run(flow_run).expected_start,
        )
        for flow_run, name, mib in ordered
    ]


# ---------------------------------------------------------------------------------------------
# Effects
# ---------------------------------------------------------------------------------------------


def _of_deployment(deployment_id: UUID) -> DeploymentFilter:
    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def _in_states(*types: StateType) -> FlowRunFilterState:
    return FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))


@dataclass(frozen=True)
class Claimer:
    """The worker process that claims a run: written in the message of the claim's Pending
    state, so that a worker looking for runs left Pending (`recovery`) tells the claim of a live
    worker (whose run is slow to start) from a dead one's."""

    worker: str
    """The worker's name (its Prefect worker, with heartbeats in the pool)."""
    host: str
    pid: int
    started: float
    """When the process started (`psutil`'s create time): a pid reused later is not it."""

    @classmethod
    def this_process(cls, worker: str) -> Claimer:
        started = psutil.Process().create_time()
        return cls(worker, socket.gethostname(), os.getpid(), round(started, 2))

    def message(self) -> str:
        return (
            f"Claimed by worker {self.worker!r} (pid {self.pid} on {self.host}, "
            f"started {self.started:.2f})"
        )

    @classmethod
    def of(cls, message: str | None) -> Claimer | None:
        """The claimer a Pending state's message names (None: not a signed claim)."""
        found = _CLAIMED_BY.fullmatch(message or "")
        if found is None:
            return None
        try:
            worker = ast.literal_eval(found["worker"])
        except (ValueError, SyntaxError):
            return None
        if not isinstance(worker, str):
            return None
        return cls(worker, found["host"], int(found["pid"]), float(found["started"]))


_CLAIMED_BY = re.compile(
    r"Claimed by worker (?P<worker>.+) \(pid (?P<pid>\d+) on (?P<host>.+), "
    r"started (?P<started>\d+(?:\.\d+)?)\)"
)


async def claim(client: PrefectClient, flow_run: FlowRun, claimer: Claimer | None = None) -> bool:
    """Move a waiting run to Pending, signed by `claimer`; only one claimant succeeds, so no run
    executes twice.

    Prefect refuses Pending over Pending or Running, but accepts it over a final state (a
    re-run): a claim made from a stale read of a run another worker has finished since would
    start it again. So once accepted, the claim is checked against the run's history
    (`claim_conflict`); a claim that replaced a final state, or that the server wrote after
    states it had read later than it, puts the state the run should be in back and counts as
    refused.

    The Pending state's message names `claimer`, so that a worker looking for runs left Pending
    by dead workers (`recovery`) leaves a live worker's slow-to-start run alone.
    """
    try:
        pending: State[Any] = Pending(message=claimer.message() if claimer else None)
        state = await propose_state(client, pending, flow_run_id=flow_run.id)
    except Abort:
        return False
    if not state.is_pending():
        return False
    conflict = claim_conflict(await client.read_flow_run_states(flow_run.id), state)
    if conflict is None:
        return True
    await client.set_flow_run_state(flow_run.id, conflict.fresh_copy(), force=True)
    return False


def claim_conflict(history: Sequence[State[Any]], claimed: State[Any]) -> State[Any] | None:
    """Whether the accepted claim `claimed` holds, from the run's `history`: None when it does,
    else the state to put the run back in.

    The server mints a state's timestamp when it reads the request, before it waits for its
    database, and lists a run's states by timestamp. So a claim read before another worker's
    claim, Running and Completed states and written after them (a server busy with a burst)
    sorts before them: it seemed to replace the waiting state, and the run executed a second
    time (three workers, 100 runs, CI). A state stamped after the claim means the claim was
    written after states it does not see before it: it is refused and the run goes back to
    the latest of them (a final state: as it ended; a waiting one: it waits again, to be
    claimed anew). A claim stamped last holds unless it replaced a final state."""
    ordered = sorted(history, key=lambda s: s.timestamp)
    ids = [s.id for s in ordered]
    if claimed.id not in ids:
        return None
    position = ids.index(claimed.id)
    if position < len(ordered) - 1:
        return ordered[-1]
    replaced = ordered[position - 1] if position > 0 else None
    return replaced if replaced is not None and replaced.is_final() else None


async def count_active(client: PrefectClient, deployment_id: UUID) -> int:
    """How many runs of the deployment hold a queue slot, across every worker of the pool."""
    return await client.count_flow_runs(
        deployment_filter=_of_deployment(deployment_id),
        flow_run_filter=FlowRunFilter(state=_in_states(*ACTIVE)),
    )


async def say_waiting(
    client: PrefectClient,
    flow_run: FlowRun,
    name: str,
    reason: str,
    claimer: Claimer | None = None,
) -> bool:
    """Show in the run's state why it waits: a Scheduled state named `name` at its own time.

    Only while it still waits: the run is claimed first (`claim`, the atomic move to Pending),
    then put back Scheduled with the reason, so a worker that read the run before another one
    claimed it never overwrites that claim. (Before, the forced Scheduled state written from a
    stale read re-opened a run another worker had just claimed: a third worker claimed it again
    and the first still ran it, so it executed twice.) False when another worker has it now.
    """
    if not await claim(client, flow_run, claimer):
        return False
    scheduled = flow_run.state.state_details.scheduled_time if flow_run.state else None
    await client.set_flow_run_state(
        flow_run.id, Scheduled(name=name, scheduled_time=scheduled, message=reason), force=True
    )
    return True


def may_retry(flow_run: FlowRun) -> bool:
    """Whether a run is a retry candidate: it failed or crashed after it started (a run whose
    inputs could not be resolved never started, and is not retried)."""
    state = flow_run.state
    return (
        state is not None
        and state.type in (StateType.FAILED, StateType.CRASHED)
        and flow_run.run_count > 0
        and flow_run.deployment_id is not None
    )


async def retry_decision(
    client: PrefectClient, flow_run: FlowRun, max_retries: int
) -> RetryDecision:
    """Whether a retry candidate (`may_retry`) is retried, and where it goes in its deployment's
    queue, from the runs waiting and started around it."""
    state, deployment_id = flow_run.state, flow_run.deployment_id
    assert state is not None and deployment_id is not None
    waiting = await client.read_flow_runs(
        deployment_filter=_of_deployment(deployment_id),
        flow_run_filter=FlowRunFilter(state=_in_states(StateType.SCHEDULED)),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=50,
    )
    # the next run may have started already (a slot freed as the run failed):
    # it is active now (Pending, Running), or it started and ended since
    not_this = FlowRunFilterId(not_any_=[flow_run.id])
    started = await client.read_flow_runs(
        deployment_filter=_of_deployment(deployment_id),
        flow_run_filter=FlowRunFilter(
            id=not_this, state=_in_states(StateType.PENDING, StateType.RUNNING)
        ),
        limit=1,
    ) or await client.read_flow_runs(
        deployment_filter=_of_deployment(deployment_id),
        flow_run_filter=FlowRunFilter(
            id=not_this,
            # is_null_=False: the server compares coalesce(start_time, expected_start_time),
            # so a run still waiting for a later time would otherwise count as started
            start_time=FlowRunFilterStartTime(after_=state.timestamp, is_null_=False),  # type: ignore[arg-type]
        ),
        limit=1,
    )
    return decide_retry(
        str(flow_run.id),
        max(flow_run.run_count, 1),
        max_retries,
        [waiting_run(run) for run in waiting if run.created is not None],
        datetime.datetime.now(datetime.timezone.utc),
        failed_created=plain_utc(flow_run.created) if flow_run.created else None,
        next_started=str(started[0].id) if started else None,
    )


async def queue_retry(client: PrefectClient, flow_run: FlowRun, logger: Any) -> bool:
    """Re-queue a failed or crashed run right after the next waiting one, if retries remain.

    The retry is the same flow run, put back in a Scheduled state ("AwaitingRetry") whose time
    places it right after the head of the queue: the order lives in the API.
    """
    if not may_retry(flow_run):
        return False
    assert flow_run.deployment_id is not None and flow_run.state is not None
    deployment = await client.read_deployment(flow_run.deployment_id)
    max_retries = spec_from_job_variables(deployment.job_variables).max_retries
    decision = await retry_decision(client, flow_run, max_retries)
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
