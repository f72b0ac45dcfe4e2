"""The order in which the runs of one low-latency deployment start: FIFO, and retry-failed-first.

For: pure decisions over values. `queue_order` sorts waiting runs into FIFO order,
`runs_to_start` says which heads of that queue may start now, and `decide_retry` says whether a
failed run is retried and where it goes back into the queue. The worker applies them.
Not for: talking to the Prefect API, reading a clock, or counting RAM (`admission`).

The order lives in the Prefect API itself, so it survives worker restarts and is the same for
every worker: waiting runs sort by `(expected_start, created, id)`, the flow run's expected start
time, then its creation time, then its id. Retry-failed-first is encoded by rescheduling the
failed run (same id, next attempt) with an expected start time placed right after the next
waiting run's, so that run starts first and the retry second, before any other waiting run.

Ties: `created` is set by the Prefect server and cannot be changed, so the only value a retry can
move is `expected_start`. When several waiting runs share the head's expected start time they
sort by creation time, and a retry placed strictly after that time comes after all of them.
`decide_retry` therefore keeps the head's exact time when the failed run's own `(created, id)`
already sorts it after the head (pass `failed_created` to allow this), and otherwise places it
just after the tied runs; the reason then names the run it actually follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

#: How far after the head's expected start time a retry is placed, at most.
RETRY_OFFSET = timedelta(milliseconds=1)
_RESOLUTION = timedelta(microseconds=1)  # what the Prefect database stores


@dataclass(frozen=True)
class WaitingRun:
    """A flow run of the deployment in a Scheduled state, waiting for its turn."""

    id: str
    expected_start: datetime
    created: datetime
    attempt: int = 1

    def sort_key(self) -> tuple[datetime, datetime, str]:
        """FIFO key: expected start time, then creation time, then id."""
        return (self.expected_start, self.created, self.id)


@dataclass(frozen=True)
class RetryDecision:
    """Whether a failed run is retried, and if so when it is expected to start.

    `attempt` is the number of the attempt the run goes on to (the one that failed when there is
    no retry). `reason` is a short sentence for the run's state message.
    """

    retry: bool
    expected_start: datetime | None
    attempt: int
    reason: str


def queue_order(waiting: Sequence[WaitingRun]) -> list[WaitingRun]:
    """The waiting runs in the order they start: by expected start, then creation, then id."""
    return sorted(waiting, key=WaitingRun.sort_key)


def runs_to_start(
    waiting: Sequence[WaitingRun],
    running: int,
    parallelism: int,
    *,
    now: datetime | None = None,
) -> list[WaitingRun]:
    """The heads of the queue that may start now, at most `parallelism - running` of them.

    `running` counts the runs of the deployment already Pending or Running; `parallelism` is the
    cap (1 is queue mode). With `now`, runs expected to start later are not due yet and are left
    waiting (with FIFO order those are always at the tail, so no run is overtaken).
    """
    if parallelism < 1:
        raise ValueError(f"parallelism must be at least 1, got {parallelism}")
    if running < 0:
        raise ValueError(f"running must not be negative, got {running}")
    free = max(0, parallelism - running)
    ordered = queue_order(waiting)
    if now is not None:
        ordered = [run for run in ordered if run.expected_start <= now]
    return ordered[:free]


def decide_retry(
    failed_id: str,
    attempts_made: int,
    max_retries: int,
    waiting: Sequence[WaitingRun],
    now: datetime,
    *,
    failed_created: datetime | None = None,
    next_started: str | None = None,
) -> RetryDecision:
    """Whether the failed run `failed_id` is retried, and its new expected start time.

    `next_started` names a run of the deployment that already started after the failure (the
    worker may have started the next run before this decision): the next run has had its turn,
    so the retry goes to the front of the waiting runs.

    `attempts_made` counts the attempt that just failed; `max_retries=1` allows 2 attempts in
    all. `waiting` is the deployment's waiting runs (the failed run itself is ignored if listed).
    When none is due at `now` (a run scheduled for tomorrow does not delay a retry) the retry
    starts at `now`; otherwise right after the head of the queue (see the module docstring for
    ties). `failed_created` is the failed run's creation time; it only matters for ties.
    """
    if attempts_made < 1:
        raise ValueError(f"attempts_made counts the failed attempt, so is >= 1: {attempts_made}")
    if max_retries < 0:
        raise ValueError(f"max_retries must not be negative, got {max_retries}")

    total = max_retries + 1
    if attempts_made > max_retries:
        noun = "attempt" if attempts_made == 1 else "attempts"
        return RetryDecision(
            retry=False,
            expected_start=None,
            attempt=attempts_made,
            reason=f"failed after {attempts_made} {noun}; max_retries={max_retries}",
        )

    attempt = attempts_made + 1
    others = queue_order([run for run in waiting if run.id != failed_id])
    if next_started is not None:
        front = min(now, others[0].expected_start - _RESOLUTION) if others else now
        return RetryDecision(
            retry=True,
            expected_start=front,
            attempt=attempt,
            reason=f"retry {attempt - 1} of {max_retries} (attempt {attempt} of {total}), "
            f"queued right after run {next_started}",
        )
    if not others or others[0].expected_start > now:
        return RetryDecision(
            retry=True,
            expected_start=now,
            attempt=attempt,
            reason=f"retry {attempt - 1} of {max_retries} (attempt {attempt} of {total}), "
            "queued to start at once: no other run is waiting",
        )

    expected_start = _slot_after_head(failed_id, others, failed_created)
    follows = _run_before(failed_id, expected_start, failed_created, others)
    return RetryDecision(
        retry=True,
        expected_start=expected_start,
        attempt=attempt,
        reason=f"retry {attempt - 1} of {max_retries} (attempt {attempt} of {total}), "
        f"queued right after run {follows.id}",
    )


def _slot_after_head(
    failed_id: str, queue: list[WaitingRun], failed_created: datetime | None
) -> datetime:
    """The expected start time that puts the failed run as close after the head as it can go.

    Keeps the head's own time when the failed run's `(created, id)` sorts it after the head;
    otherwise the head's time plus the smaller of 1 ms and half the gap to the next greater
    expected start time (never less than 1 µs, the database's resolution: with a 1 µs gap the
    retry ties with the next run and creation time decides).
    """
    head = queue[0]
    ties = [r for r in queue[1:] if r.expected_start == head.expected_start]
    if ties and failed_created is not None:
        if (head.expected_start, failed_created, failed_id) > head.sort_key():
            return head.expected_start
    later = [r.expected_start for r in queue if r.expected_start > head.expected_start]
    offset = RETRY_OFFSET
    if later:  # half the gap, rounded down to whole microseconds
        half_gap = (later[0] - head.expected_start) // _RESOLUTION // 2 * _RESOLUTION
        offset = max(_RESOLUTION, min(offset, half_gap))
    return head.expected_start + offset


def _run_before(
    failed_id: str,
    expected_start: datetime,
    failed_created: datetime | None,
    queue: list[WaitingRun],
) -> WaitingRun:
    """The waiting run the retried run sorts right after (the head or a run tied with it).

    Without `failed_created`, runs expected at exactly the same time are taken to sort after it
    (they were created later in the usual case, when the failed run had started before them).
    """

    def before(run: WaitingRun) -> bool:
        if run.expected_start != expected_start:
            return run.expected_start < expected_start
        return failed_created is not None and run.sort_key() < (
            expected_start,
            failed_created,
            failed_id,
        )

    return [run for run in queue if before(run)][-1]
