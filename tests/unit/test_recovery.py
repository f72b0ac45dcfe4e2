"""Which runs left Pending the recovery re-queues: the claim's signature and the claimer's life.

Pure: claimers and heartbeats are built in memory; whether a process of this machine lives is
given as a table (`alive`). The API side (`recover_abandoned`) is pinned in
tests/integration/test_worker_inprocess.py.
"""

from __future__ import annotations

import datetime

import pytest

from prefect_pipedeploy.worker.dispatch import Claimer
from prefect_pipedeploy.worker.recovery import claim_abandoned

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
ME = Claimer("me", "host-a", 100, 1700000000.25)
LIVE_HERE = Claimer("live", "host-a", 200, 1700000001.5)
DEAD_HERE = Claimer("dead", "host-a", 300, 1700000002.0)
REUSED_PID = Claimer("reused", "host-a", 200, 1600000000.0)  # pid 200 is another process now
ELSEWHERE = Claimer("remote", "host-b", 200, 1700000001.5)


def alive(pid: int, started: float) -> bool:
    return (pid, started) in {(100, 1700000000.25), (200, 1700000001.5)}


def beat(seconds_ago: float | None, interval_s: float = 30.0) -> dict:
    if seconds_ago is None:
        return {}
    return {"remote": (NOW - datetime.timedelta(seconds=seconds_ago), interval_s)}


@pytest.mark.parametrize(
    ("claimer", "heartbeats", "abandoned"),
    [
        (None, {}, True),  # an unsigned claim (by hand, or an older version): as before
        (ME, {}, True),  # the caller's own claim it no longer holds (held ones are left out)
        (LIVE_HERE, {}, False),  # a live worker of this machine: its run is slow to start
        (DEAD_HERE, {}, True),
        (REUSED_PID, {}, True),
        (ELSEWHERE, beat(10), False),  # another machine's worker, heartbeat fresh
        (ELSEWHERE, beat(89), False),  # within 3 heartbeats of 30 s
        (ELSEWHERE, beat(91), True),  # missed 3 heartbeats: Prefect's "offline"
        (ELSEWHERE, beat(25, interval_s=5), True),
        (ELSEWHERE, beat(None), True),  # no such worker in the pool (deleted)
    ],
)
def test_a_claim_is_abandoned_only_when_its_worker_is_gone(
    claimer: Claimer | None, heartbeats: dict, abandoned: bool
) -> None:
    assert claim_abandoned(claimer, ME, NOW, heartbeats, alive) is abandoned


@pytest.mark.parametrize(
    "claimer",
    [
        ME,
        Claimer("PipeDeployWorker 1f0c", "node-7.example", 1, 0.0),
        Claimer('it\'s (a) "name"', "h", 2, 3.5),
    ],
)
def test_a_claim_names_its_claimer_in_its_message(claimer: Claimer) -> None:
    assert Claimer.of(claimer.message()) == claimer


@pytest.mark.parametrize(
    "message", [None, "", "Pending", "Claimed by worker x (pid 1 on h, started 2)", "Recovered"]
)
def test_a_message_that_is_not_a_signed_claim_names_no_claimer(message: str | None) -> None:
    assert Claimer.of(message) is None
