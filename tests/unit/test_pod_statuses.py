"""A low-latency deployment's status from its pods' statuses, `down` included (pure).

`down` (the worker stopped the pod) used to be published by the worker and unknown to the SDK,
so a deployment whose pods were all stopped read `creation_pending`.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from prefect_pipedeploy.spec import build_spec
from prefect_pipedeploy.status import (
    DEPLOYMENT_STATUSES,
    PodStatus,
    deployment_status,
    merge_pod_statuses,
)


def pod(worker: str, status: str) -> dict:
    return {"worker": worker, "status": status, "message": None, "log_tail": "", "pid": 1}


@pytest.mark.parametrize(
    ("published", "status"),
    [
        ([], "creation_pending"),
        ([pod("a", "down")], "down"),
        ([pod("a", "down"), pod("b", "down")], "down"),
        ([pod("a", "down"), pod("b", "creation_pending")], "creation_pending"),
        ([pod("a", "down"), pod("b", "up")], "up"),
        ([pod("a", "down_retrying"), pod("b", "down")], "down_retrying"),
        ([pod("a", "creation_failed"), pod("b", "down")], "creation_failed"),
        ([pod("a", "something-new")], "creation_pending"),  # unknown to this version
    ],
)
def test_a_low_latency_deployment_shows_its_best_pod(published: list[dict], status: str) -> None:
    deployment = SimpleNamespace(id=uuid.uuid4(), paused=False)
    spec = build_spec(mode="low_latency")
    merged = merge_pod_statuses(published)
    assert deployment_status(deployment, spec, merged) == status  # type: ignore[arg-type]


def test_disabled_and_elastic_deployments() -> None:
    elastic, low_latency = build_spec(mode="elastic"), build_spec(mode="low_latency")
    paused = SimpleNamespace(paused=True)
    active = SimpleNamespace(paused=False)
    assert deployment_status(paused, low_latency, {"status": "up"}) == "disabled"  # type: ignore[arg-type]
    assert deployment_status(active, elastic, None) == "standby"  # type: ignore[arg-type]


def test_every_pod_status_is_a_deployment_status() -> None:
    assert set(DEPLOYMENT_STATUSES) == {s.value for s in PodStatus} | {"standby", "disabled"}
