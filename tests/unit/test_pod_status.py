"""One status for a low-latency deployment whose pods several workers run (pure logic)."""

from __future__ import annotations

import uuid

import pytest

from prefect_pipedeploy.prefect_api.published import status_variable_name
from prefect_pipedeploy.status import merge_pod_statuses


def pod(worker: str, status: str, message: str | None = None, tail: str = "") -> dict:
    return {"worker": worker, "status": status, "message": message, "log_tail": tail, "pid": 1}


@pytest.mark.parametrize(
    ("published", "status", "message"),
    [
        ([pod("a", "up")], "up", None),
        ([pod("a", "creation_pending", "waiting for RAM"), pod("b", "up")], "up", None),
        ([pod("a", "down_retrying", "crashed"), pod("b", "creation_pending", "w")], "down_retrying", "crashed"),
        ([pod("a", "creation_failed", "ImportError"), pod("b", "creation_pending", "w")], "creation_failed", "ImportError"),
        ([pod("a", "down", "stopped: disabled"), pod("b", "creation_pending", "w")], "creation_pending", "w"),
        ([pod("a", "down", "stopped: disabled")], "down", "stopped: disabled"),
    ],
)  # fmt: skip
def test_the_best_pod_speaks_for_the_deployment(
    published: list[dict], status: str, message: str | None
) -> None:
    merged = merge_pod_statuses(published)
    assert merged is not None
    assert (merged["status"], merged["message"]) == (status, message)
    assert [p["worker"] for p in merged["pods"]] == sorted(p["worker"] for p in published)


def test_no_worker_published() -> None:
    assert merge_pod_statuses([]) is None


def test_log_tails_name_their_worker_when_there_are_several() -> None:
    assert merge_pod_statuses([pod("a", "up", tail="one\ntwo")])["log_tail"] == "one\ntwo"  # type: ignore[index]
    merged = merge_pod_statuses([pod("b", "up", tail="B says"), pod("a", "up", tail="A says")])
    assert merged is not None
    assert merged["log_tail"].splitlines() == ["[worker a]", "A says", "[worker b]", "B says"]


def test_each_worker_has_its_own_variable() -> None:
    deployment = uuid.uuid4()
    names = {status_variable_name(deployment, w) for w in ("worker-1", "worker-2")}
    assert len(names) == 2
    assert all(n.startswith(f"pipedeploy_pod_{deployment.hex}_") for n in names)
    assert all(len(n) <= 64 and n == n.lower() for n in names)
