"""Tables for `prefect_pipedeploy.ordering`: FIFO order, the start cap, and retry placement.

The simulation at the end replays queue-mode scenarios through the three functions the way the
worker applies them, and pins the start order of semantics 1 and 2 in DESIGN.md.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from prefect_pipedeploy.ordering import (
    RetryDecision,
    WaitingRun,
    decide_retry,
    queue_order,
    runs_to_start,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
MS = timedelta(milliseconds=1)
US = timedelta(microseconds=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(id: str, start: float, created: float | None = None, attempt: int = 1) -> WaitingRun:
    """A waiting run expected `start` s after T0, created `created` s after T0 (default: start)."""
    return WaitingRun(id, at(start), at(start if created is None else created), attempt)


def ids(runs: list[WaitingRun]) -> str:
    return "".join(r.id for r in runs)


# ---------------------------------------------------------------------------------------------
# queue_order
# ---------------------------------------------------------------------------------------------

QUEUE = [run("A", 1), run("B", 2), run("C", 3), run("D", 4)]


@pytest.mark.parametrize(
    ("waiting", "expected"),
    [
        pytest.param([], "", id="empty"),
        pytest.param([run("A", 1)], "A", id="one"),
        pytest.param(QUEUE, "ABCD", id="already-ordered"),
        pytest.param(QUEUE[::-1], "ABCD", id="reversed"),
        pytest.param([QUEUE[2], QUEUE[0], QUEUE[3], QUEUE[1]], "ABCD", id="shuffled"),
        pytest.param(
            [run("B", 1, created=2), run("A", 1, created=1), run("C", 0, created=9)],
            "CAB",
            id="tie-on-start-by-created",
        ),
        pytest.param(
            [run("z", 1, created=1), run("y", 1, created=1), run("x", 1, created=1)],
            "xyz",
            id="tie-on-start-and-created-by-id",
        ),
        pytest.param(
            [run("B", 1, created=0), run("A", 2, created=-5)],
            "BA",
            id="start-beats-created",
        ),
        pytest.param(
            [run("R", 1 + 0.001, created=0, attempt=2), run("C", 2), run("B", 1)],
            "BRC",
            id="retry-slot-between",
        ),
    ],
)
def test_queue_order(waiting: list[WaitingRun], expected: str) -> None:
    assert ids(queue_order(waiting)) == expected


@pytest.mark.parametrize("seed", range(20))
def test_queue_order_ignores_input_order(seed: int) -> None:
    rng = random.Random(seed)
    runs = [run(f"r{i:02}", rng.choice([1, 2, 3]), rng.choice([1, 2])) for i in range(12)]
    shuffled = runs[:]
    rng.shuffle(shuffled)
    assert queue_order(shuffled) == queue_order(runs)
    keys = [(r.expected_start, r.created, r.id) for r in queue_order(runs)]
    assert keys == sorted(keys)


# ---------------------------------------------------------------------------------------------
# runs_to_start
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "running", "parallelism", "expected"),
    [
        pytest.param(QUEUE, 0, 1, "A", id="queue-idle-starts-head"),
        pytest.param(QUEUE[::-1], 0, 1, "A", id="queue-head-not-first-given"),
        pytest.param(QUEUE, 1, 1, "", id="queue-busy"),
        pytest.param(QUEUE, 2, 1, "", id="queue-over-cap-never-negative"),
        pytest.param([], 0, 1, "", id="queue-nothing-waiting"),
        pytest.param(QUEUE, 0, 3, "ABC", id="parallel-idle"),
        pytest.param(QUEUE, 1, 3, "AB", id="parallel-one-running"),
        pytest.param(QUEUE, 3, 3, "", id="parallel-full"),
        pytest.param(QUEUE, 5, 3, "", id="parallel-over-cap"),
        pytest.param(QUEUE, 0, 10, "ABCD", id="parallel-more-room-than-runs"),
        pytest.param(QUEUE[:2], 1, 4, "AB", id="parallel-all-waiting-fit"),
    ],
)
def test_runs_to_start(
    waiting: list[WaitingRun], running: int, parallelism: int, expected: str
) -> None:
    assert ids(runs_to_start(waiting, running, parallelism)) == expected


@pytest.mark.parametrize(
    ("now", "parallelism", "expected"),
    [
        pytest.param(at(0), 4, "", id="none-due"),
        pytest.param(at(1), 4, "A", id="head-due-exactly"),
        pytest.param(at(2.5), 4, "AB", id="two-due"),
        pytest.param(at(2.5), 1, "A", id="cap-still-applies"),
        pytest.param(at(99), 4, "ABCD", id="all-due"),
    ],
)
def test_runs_to_start_leaves_runs_not_due_yet(
    now: datetime, parallelism: int, expected: str
) -> None:
    assert ids(runs_to_start(QUEUE, 0, parallelism, now=now)) == expected


@pytest.mark.parametrize(
    ("running", "parallelism"), [pytest.param(0, 0, id="no-cap"), pytest.param(-1, 1, id="neg")]
)
def test_runs_to_start_refuses_nonsense(running: int, parallelism: int) -> None:
    with pytest.raises(ValueError):
        runs_to_start(QUEUE, running, parallelism)


# ---------------------------------------------------------------------------------------------
# decide_retry
# ---------------------------------------------------------------------------------------------

NOW = at(10)


@pytest.mark.parametrize(
    ("attempts_made", "max_retries", "waiting", "expected"),
    [
        pytest.param(
            1,
            1,
            [],
            RetryDecision(
                True,
                NOW,
                2,
                "retry 1 of 1 (attempt 2 of 2), queued to start at once: no other run is waiting",
            ),
            id="nothing-waiting-retries-now",
        ),
        pytest.param(
            1,
            1,
            [run("A", 0, attempt=1)],
            RetryDecision(
                True,
                NOW,
                2,
                "retry 1 of 1 (attempt 2 of 2), queued to start at once: no other run is waiting",
            ),
            id="failed-run-itself-listed-is-ignored",
        ),
        pytest.param(
            1,
            1,
            [run("B", 20), run("C", 30)],
            RetryDecision(
                True,
                NOW,
                2,
                "retry 1 of 1 (attempt 2 of 2), queued to start at once: no other run is waiting",
            ),
            id="only-future-runs-do-not-delay",
        ),
        pytest.param(
            1,
            1,
            [run("C", 3), run("B", 2), run("D", 4)],
            RetryDecision(
                True, at(2) + MS, 2, "retry 1 of 1 (attempt 2 of 2), queued right after run B"
            ),
            id="after-head-by-1ms",
        ),
        pytest.param(
            1,
            1,
            [run("B", 2)],
            RetryDecision(
                True, at(2) + MS, 2, "retry 1 of 1 (attempt 2 of 2), queued right after run B"
            ),
            id="only-head-waiting",
        ),
        pytest.param(
            1,
            1,
            [run("B", 2), run("C", 20)],
            RetryDecision(
                True, at(2) + MS, 2, "retry 1 of 1 (attempt 2 of 2), queued right after run B"
            ),
            id="next-run-not-due-still-bounds",
        ),
        pytest.param(
            1,
            1,
            [run("B", 2), run("C", 2 + 0.0004)],
            RetryDecision(
                True,
                at(2) + 200 * US,
                2,
                "retry 1 of 1 (attempt 2 of 2), queued right after run B",
            ),
            id="half-the-gap-when-under-2ms",
        ),
        pytest.param(
            1,
            1,
            [run("B", 2), run("C", 2 + 0.000003)],
            RetryDecision(
                True, at(2) + US, 2, "retry 1 of 1 (attempt 2 of 2), queued right after run B"
            ),
            id="odd-gap-rounds-down-to-microseconds",
        ),
        pytest.param(
            1,
            1,
            [run("B", 2), run("C", 2 + 0.000001)],
            RetryDecision(
                True, at(2) + US, 2, "retry 1 of 1 (attempt 2 of 2), queued right after run B"
            ),
            id="1us-gap-ties-with-next",
        ),
        pytest.param(
            1,
            1,
            [run("B", 2, created=1), run("C", 2, created=2), run("D", 4)],
            RetryDecision(
                True, at(2) + MS, 2, "retry 1 of 1 (attempt 2 of 2), queued right after run C"
            ),
            id="tie-with-head-goes-after-tied-runs",
        ),
        pytest.param(
            1,
            2,
            [run("B", 2), run("C", 3)],
            RetryDecision(
                True, at(2) + MS, 2, "retry 1 of 2 (attempt 2 of 3), queued right after run B"
            ),
            id="first-of-two-retries",
        ),
        pytest.param(
            2,
            2,
            [run("C", 3)],
            RetryDecision(
                True, at(3) + MS, 3, "retry 2 of 2 (attempt 3 of 3), queued right after run C"
            ),
            id="second-of-two-retries",
        ),
        pytest.param(
            2,
            1,
            [run("B", 2)],
            RetryDecision(False, None, 2, "failed after 2 attempts; max_retries=1"),
            id="exhausted",
        ),
        pytest.param(
            1,
            0,
            [run("B", 2)],
            RetryDecision(False, None, 1, "failed after 1 attempt; max_retries=0"),
            id="no-retries-configured",
        ),
        pytest.param(
            3,
            2,
            [],
            RetryDecision(False, None, 3, "failed after 3 attempts; max_retries=2"),
            id="exhausted-nothing-waiting",
        ),
    ],
)
def test_decide_retry(
    attempts_made: int, max_retries: int, waiting: list[WaitingRun], expected: RetryDecision
) -> None:
    assert decide_retry("A", attempts_made, max_retries, waiting, NOW) == expected


@pytest.mark.parametrize(
    ("failed_created", "expected_start", "after"),
    [
        pytest.param(None, at(2) + MS, "C", id="unknown-created-after-tied-runs"),
        pytest.param(at(0), at(2) + MS, "C", id="created-before-head-after-tied-runs"),
        pytest.param(at(1.5), at(2), "B", id="created-between-keeps-head-time"),
        pytest.param(at(2.5), at(2), "C", id="created-after-all-tied-keeps-head-time"),
    ],
)
def test_decide_retry_ties_with_head(
    failed_created: datetime | None, expected_start: datetime, after: str
) -> None:
    """B and C share the head's time: the retry goes right after B when its creation allows."""
    waiting = [run("B", 2, created=1), run("C", 2, created=2), run("D", 4)]
    decision = decide_retry("A", 1, 1, waiting, NOW, failed_created=failed_created)
    assert decision.expected_start == expected_start
    assert decision.reason.endswith(f"queued right after run {after}")
    retried = WaitingRun("A", expected_start, failed_created or at(0), 2)
    order = ids(queue_order([*waiting, retried]))
    assert order.index("A") == order.index(after) + 1


@pytest.mark.parametrize(
    ("attempts_made", "max_retries"), [pytest.param(0, 1, id="no-attempt"), (1, -1)]
)
def test_decide_retry_refuses_nonsense(attempts_made: int, max_retries: int) -> None:
    with pytest.raises(ValueError):
        decide_retry("A", attempts_made, max_retries, [], NOW)


# ---------------------------------------------------------------------------------------------
# Simulation: queue mode, one run at a time, replayed the way the worker applies the decisions
# ---------------------------------------------------------------------------------------------


def simulate(
    queue: list[WaitingRun], fails: Callable[[str, int], bool], max_retries: int
) -> tuple[list[str], dict[str, str]]:
    """Start the runs of `queue` (all waiting at once) one at a time until none waits.

    Returns the start order and each run's final state. `fails(id, attempt)` says whether that
    attempt fails. Each attempt takes 1 s; `now` advances with it.
    """
    waiting = list(queue)
    created = {r.id: r.created for r in waiting}
    started: list[str] = []
    final: dict[str, str] = {}
    now = max(r.expected_start for r in queue)
    while waiting:
        (head,) = runs_to_start(waiting, 0, 1, now=now)
        waiting.remove(head)
        started.append(head.id)
        now += timedelta(seconds=1)
        if not fails(head.id, head.attempt):
            final[head.id] = "Completed"
            continue
        decision = decide_retry(
            head.id, head.attempt, max_retries, waiting, now, failed_created=created[head.id]
        )
        if decision.retry:
            assert decision.expected_start is not None
            retried = WaitingRun(
                head.id, decision.expected_start, created[head.id], decision.attempt
            )
            waiting.append(retried)
        else:
            final[head.id] = "Failed"
    return started, final


def fail_once(target: str) -> Callable[[str, int], bool]:
    return lambda id, attempt: id == target and attempt == 1


def always_fail(target: str) -> Callable[[str, int], bool]:
    return lambda id, attempt: id == target


def never_fail(id: str, attempt: int) -> bool:
    return False


@pytest.mark.parametrize(
    ("runs", "fails", "max_retries", "start_order", "failed"),
    [
        pytest.param("ABCD", never_fail, 1, "ABCD", "", id="fifo"),
        pytest.param("ABCD", fail_once("A"), 1, "ABACD", "", id="A-fails-once-retried-after-B"),
        pytest.param("A", fail_once("A"), 1, "AA", "", id="A-fails-nothing-waiting"),
        pytest.param("ABCD", always_fail("A"), 1, "ABACD", "A", id="retries-exhausted"),
        pytest.param("ABCD", fail_once("D"), 1, "ABCDD", "", id="last-run-fails"),
        pytest.param("ABCD", fail_once("B"), 1, "ABCBD", "", id="middle-run-fails"),
        pytest.param("ABCD", always_fail("A"), 0, "ABCD", "A", id="max-retries-0"),
        pytest.param("ABCD", always_fail("A"), 2, "ABACAD", "A", id="max-retries-2"),
        pytest.param("AB", always_fail("A"), 3, "ABAAA", "A", id="retries-outlast-queue"),
        pytest.param(
            "ABCD",
            lambda id, attempt: attempt == 1 and id in "AB",
            1,
            "ABABCD",
            "",
            id="B-fails-after-A-retried-first",
        ),
    ],
)
def test_queue_mode_start_order(
    runs: str,
    fails: Callable[[str, int], bool],
    max_retries: int,
    start_order: str,
    failed: str,
) -> None:
    started, final = simulate([run(r, i) for i, r in enumerate(runs)], fails, max_retries)
    assert "".join(started) == start_order
    assert sorted(final) == sorted(runs)
    assert "".join(sorted(r for r, state in final.items() if state == "Failed")) == failed


@pytest.mark.parametrize(
    ("queue", "start_order"),
    [
        pytest.param(
            [run("A", 0), run("B", 1, created=1), run("C", 1, created=2), run("D", 2)],
            "ABCAD",
            id="tied-runs-keep-their-order-retry-after-them",
        ),
        pytest.param(
            [run("A", 0, created=1.5), run("B", 1, created=1), run("C", 1, created=2), run("D", 2)],
            "ABACD",
            id="retry-created-between-tied-runs-right-after-head",
        ),
        pytest.param(
            [run("A", 0), run("B", 1), run("C", 1.000001), run("D", 2)],
            "ABACD",
            id="gap-of-1us-retry-ties-with-next-run-created-first",
        ),
    ],
)
def test_queue_mode_with_ties(queue: list[WaitingRun], start_order: str) -> None:
    """Ties on expected start resolve by creation time; the retry never starts before the head."""
    started, _ = simulate(queue, fail_once("A"), 1)
    assert "".join(started) == start_order
