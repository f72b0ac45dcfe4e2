"""The worker's dispatch decisions as values: where ready runs go, which start, retry candidates.

Pure: flow runs are built in memory (no server). The order rules themselves are pinned in
test_ordering; these tables pin how the worker applies them.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.events.schemas.events import Event
from prefect.states import Completed, Crashed, Failed, Pending, Running, Scheduled

from prefect_pipedeploy.admission import run_key
from prefect_pipedeploy.worker.dispatch import (
    claim_conflict,
    deployment_of,
    may_retry,
    pod_heads,
    ram_requests,
    split_ready_runs,
    waiting_run,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
ELASTIC, LOW_LATENCY, GONE, POD = (uuid.uuid4() for _ in range(4))


def run(
    deployment: uuid.UUID | None = ELASTIC,
    at_s: float = 0.0,
    created_s: float | None = None,
    state: object = None,
    run_count: int = 0,
    name: str = "",
) -> FlowRun:
    """A Scheduled run due `at_s` after T0 (created at `created_s`, default: when due)."""
    created = T0 + timedelta(seconds=at_s if created_s is None else created_s)
    return FlowRun(
        id=uuid.uuid4(),
        name=name or f"run-{at_s}",
        flow_id=uuid.uuid4(),
        deployment_id=deployment,
        created=created,
        state=state or Scheduled(scheduled_time=T0 + timedelta(seconds=at_s)),
        run_count=run_count,
    )


MODES = {ELASTIC: "elastic", LOW_LATENCY: "low_latency", GONE: None}


def test_ready_runs_go_where_their_deployment_says() -> None:
    runs = {
        "elastic": run(ELASTIC),
        "pod": run(POD),
        "no pod yet": run(LOW_LATENCY),
        "gone": run(GONE),
        "no deployment": run(None),
        "submitting": run(ELASTIC),
    }
    ready = split_ready_runs(list(runs.values()), {POD}, MODES, {runs["submitting"].id})
    assert ready.elastic == [runs["elastic"]]
    assert ready.to_pods == {POD: [runs["pod"]]}
    assert ready.waiting_for_pod == [runs["no pod yet"]]
    assert ready.unknown == [runs["gone"]]  # neither a run without deployment nor a submitting one


def test_a_pod_wins_over_the_mode_read_from_the_deployment() -> None:
    """A run whose deployment has a pod here goes to it, without reading the deployment."""
    pod_run = run(LOW_LATENCY)
    ready = split_ready_runs([pod_run], {LOW_LATENCY}, {}, set())
    assert ready.to_pods == {LOW_LATENCY: [pod_run]}


@pytest.mark.parametrize(
    ("due_s", "running", "parallelism", "started", "held_back"),
    [
        ([0, 1, 2], 0, 1, [0], True),  # queue mode: one at a time, the oldest
        ([2, 0, 1], 0, 1, [0], True),  # whatever order the API returned them in
        ([0, 1, 2], 1, 1, [], True),  # the slot is taken
        ([0, 1, 2], 0, 6, [0, 1, 2], False),  # parallel: all fit
        ([0, 1, 2, 3], 4, 6, [0, 1], True),  # two slots left
        ([0, 30], 0, 6, [0], True),  # the run due later is not started early
        ([], 0, 1, [], False),
    ],
)
def test_pod_heads(
    due_s: list[int], running: int, parallelism: int, started: list[int], held_back: bool
) -> None:
    runs = {at: run(POD, at_s=at) for at in due_s}
    now = T0 + timedelta(seconds=max(due_s, default=0) if 30 not in due_s else 5)
    heads, held = pod_heads(list(runs.values()), running, parallelism, now)
    assert heads == [runs[at] for at in started]
    assert held is held_back


def test_elastic_ram_requests_are_fifo_by_due_time_then_creation() -> None:
    later = run(ELASTIC, at_s=5)
    tie_second = run(ELASTIC, at_s=1, created_s=0.5)
    tie_first = run(ELASTIC, at_s=1, created_s=0.2)
    requests = ram_requests([(later, "b", 256), (tie_second, "a", 512), (tie_first, "a", 0)])
    assert [r.key for r in requests] == [run_key(r.id) for r in (tie_first, tie_second, later)]
    assert [r.mib for r in requests] == [0, 512, 256]
    assert requests[0].label == f"execution {str(tie_first.id)[:8]} of a"
    assert requests[0].requested_at == T0 + timedelta(seconds=1)


def test_waiting_run_uses_the_scheduled_time_and_counts_the_next_attempt() -> None:
    retried = run(ELASTIC, at_s=10, created_s=0, run_count=1)
    waiting = waiting_run(retried)
    assert waiting.expected_start == T0 + timedelta(seconds=10)
    assert waiting.created == T0
    assert waiting.attempt == 2


def test_waiting_run_without_creation_time_is_refused_by_name() -> None:
    broken = run(ELASTIC)
    broken.created = None
    with pytest.raises(ValueError, match=str(broken.id)):
        waiting_run(broken)


@pytest.mark.parametrize(
    ("state", "run_count", "deployment", "candidate"),
    [
        (Failed(), 1, ELASTIC, True),
        (Crashed(), 2, ELASTIC, True),
        (Failed(), 0, ELASTIC, False),  # it never started: its inputs could not be resolved
        (Completed(), 1, ELASTIC, False),
        (Running(), 1, ELASTIC, False),
        (Failed(), 1, None, False),  # not a deployment's run
    ],
)
def test_retry_candidates(
    state: object, run_count: int, deployment: object, candidate: bool
) -> None:
    flow_run = run(deployment, state=state, run_count=run_count)  # type: ignore[arg-type]
    assert flow_run.state is not None and flow_run.state.type in StateType
    assert may_retry(flow_run) is candidate


def history(*specs: tuple[str, float]) -> list:
    """A run's states (name, timestamp s after T0), as the server lists them."""
    made = {
        "Scheduled": Scheduled,
        "Late": lambda: Scheduled(name="Late"),
        "Pending": Pending,
        "Running": Running,
        "Completed": Completed,
        "Failed": Failed,
        "AwaitingRetry": lambda: Scheduled(name="AwaitingRetry"),
    }
    listed = []
    for name, stamp_s in specs:
        state = made[name]()
        state.timestamp = T0 + timedelta(seconds=stamp_s)
        listed.append(state)
    return listed


@pytest.mark.parametrize(
    ("states", "claimed_at", "put_back"),
    [
        # the usual claim: stamped last, after the waiting state: it holds
        ([("Scheduled", 0), ("Late", 12), ("Pending", 15)], 2, None),
        # a claim from a stale read of a run another worker finished: it replaced Completed
        (
            [("Scheduled", 0), ("Pending", 1), ("Running", 2), ("Completed", 3), ("Pending", 4)],
            4,
            "Completed",
        ),
        # CI, three workers: another worker's claim at 33.8 s, ours read by the server at
        # 34.5 s and written after that worker's Running and Completed (35.9, 36.3)
        (
            [
                ("Scheduled", 0),
                ("Late", 12),
                ("Pending", 33.8),
                ("Pending", 34.5),
                ("Running", 35.9),
                ("Completed", 36.3),
            ],
            3,
            "Completed",
        ),
        # stamped before a failure and its retry, written after both: back to waiting
        (
            [("Scheduled", 0), ("Pending", 1), ("Running", 2), ("Failed", 3), ("AwaitingRetry", 4)],
            1,
            "AwaitingRetry",
        ),
        # the server marked the run Late while our claim waited for its database: it waits again
        ([("Scheduled", 0), ("Pending", 11), ("Late", 12)], 1, "Late"),
        # a retry's claim after its AwaitingRetry state holds
        (
            [("Scheduled", 0), ("Running", 1), ("Failed", 2), ("AwaitingRetry", 3), ("Pending", 4)],
            4,
            None,
        ),
        # the first state of a run
        ([("Pending", 0)], 0, None),
    ],
)
def test_a_claim_holds_only_when_the_server_wrote_it_over_a_waiting_state(
    states: list[tuple[str, float]], claimed_at: int, put_back: str | None
) -> None:
    listed = history(*states)
    conflict = claim_conflict(sorted(listed, key=lambda s: s.timestamp), listed[claimed_at])
    assert (conflict.name if conflict else None) == put_back


def test_a_claim_not_in_the_history_read_holds() -> None:
    assert claim_conflict(history(("Scheduled", 0)), Pending()) is None


DEPLOYMENT = uuid.uuid4()


@pytest.mark.parametrize(
    ("related", "expected"),
    [
        (
            [("prefect.flow.1", "flow"), (f"prefect.deployment.{DEPLOYMENT}", "deployment")],
            DEPLOYMENT,
        ),
        ([("prefect.flow.1", "flow"), ("prefect.work-pool.2", "work-pool")], None),
        ([], None),
        ([("prefect.deployment.not-a-uuid", "deployment")], None),
    ],
    ids=["among related", "none related", "no related", "malformed id"],
)
def test_the_deployment_a_runs_event_names(
    related: list[tuple[str, str]], expected: uuid.UUID | None
) -> None:
    event = Event(
        event="prefect.flow-run.Scheduled",
        resource={"prefect.resource.id": f"prefect.flow-run.{uuid.uuid4()}"},
        related=[
            {"prefect.resource.id": ident, "prefect.resource.role": role} for ident, role in related
        ],
    )
    assert deployment_of(event) == expected
