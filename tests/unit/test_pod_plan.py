"""The pod supervisor's reconcile plan as values: which pods start and stop, in which order.

Pure: deployments are small in-memory stand-ins with the fields the plan reads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from prefect_pipedeploy.runtimes.pod_plan import (
    PodStop,
    RunningPod,
    backoff_s,
    plan_pods,
    pod_fingerprint,
    wants_pod,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Deployment:
    name: str
    mode: str = "low_latency"
    paused: bool = False
    updated_s: int = 0
    created_s: int = 0
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    extra: dict[str, Any] = field(default_factory=dict)
    entrypoint: str = "pipeline.py:score"
    path: str = "/srv/pipelines"
    pull_steps: list[dict[str, Any]] = field(default_factory=list)
    version: str | None = None
    flow_id: uuid.UUID = field(default_factory=lambda: uuid.UUID(int=1))
    parameter_openapi_schema: dict[str, Any] = field(default_factory=dict)

    @property
    def job_variables(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.extra}

    @property
    def updated(self) -> datetime:
        return T0 + timedelta(seconds=self.updated_s)

    @property
    def created(self) -> datetime:
        return T0 + timedelta(seconds=self.created_s)


@pytest.mark.parametrize(
    ("deployment", "wanted"),
    [
        (Deployment("ll"), True),
        (Deployment("elastic", mode="elastic"), False),
        (Deployment("paused", paused=True), False),
        (Deployment("invalid", extra={"ram_request": "512"}), False),  # its runs fail instead
    ],
)
def test_which_deployments_want_a_pod(deployment: Deployment, wanted: bool) -> None:
    assert wants_pod(deployment) is wanted


def test_new_low_latency_deployments_start_oldest_first() -> None:
    young, old = Deployment("young", created_s=20), Deployment("old", created_s=10)
    elastic = Deployment("elastic", mode="elastic")
    plan = plan_pods({}, [young, elastic, old])
    assert plan.stop == []
    assert [d.name for d in plan.start] == ["old", "young"]


def running(deployment: Deployment) -> dict[uuid.UUID, RunningPod]:
    return {deployment.id: RunningPod(pod_fingerprint(deployment), deployment.updated)}


def test_unchanged_pods_are_left_alone() -> None:
    kept = Deployment("kept", updated_s=5)
    plan = plan_pods(running(kept), [kept])
    assert plan.stop == [] and plan.start == [] and plan.update == []


RECREATE = "its deployment's code, environment or resources changed"
STOPPED = "its deployment was disabled or changed mode"
CHANGES: dict[str, dict[str, Any]] = {
    "ram_request": {"ram_request": "1GiB"},
    "env": {"env": {"MODEL": "v2"}},
    "parallelism": {"enable_parallel_executions": True},
    "token": {"endpoint_token_hash": "sha256:new"},
    "mapping": {"inputs_mapping": [{"pipeline_input_name": "x", "is_null": True}]},
    "timeout": {"execution_timeout_s": 5},
    "retries": {"max_retries": 3},
}


@pytest.mark.parametrize(
    ("change", "reason", "deleted", "replaced", "updated_in_place"),
    [
        ("deleted", "its deployment was deleted", True, False, False),
        ("paused", STOPPED, False, False, False),
        ("elastic", STOPPED, False, False, False),
        # what runs in the pod changed: a new pod
        ("ram_request", RECREATE, False, True, False),
        ("env", RECREATE, False, True, False),
        ("parallelism", RECREATE, False, True, False),
        ("entrypoint", RECREATE, False, True, False),
        ("version", RECREATE, False, True, False),
        ("signature", RECREATE, False, True, False),
        # what the running pod takes as it is: no restart (any update used to restart it)
        ("token", None, False, False, True),
        ("mapping", None, False, False, True),
        ("timeout", None, False, False, True),
        ("retries", None, False, False, True),
    ],
)
def test_only_changes_to_what_runs_in_the_pod_recreate_it(
    change: str, reason: str | None, deleted: bool, replaced: bool, updated_in_place: bool
) -> None:
    before = Deployment("running", updated_s=5)
    pods = running(before)
    after = Deployment("running", updated_s=6, id=before.id)
    if change == "paused":
        after.paused = True
    elif change == "elastic":
        after.mode = "elastic"
    elif change == "entrypoint":
        after.entrypoint = "pipeline.py:other"
    elif change == "version":
        after.version = "2"
    elif change == "signature":
        after.parameter_openapi_schema = {"properties": {"y": {}}}
    else:
        after.extra = CHANGES.get(change, {})
    deployments = [] if change == "deleted" else [after]
    plan = plan_pods(pods, deployments)
    stops = [PodStop(before.id, reason, deleted=deleted, replaced=replaced)] if reason else []
    assert plan.stop == stops
    assert [d.name for d in plan.start] == (["running"] if replaced else [])
    assert [d.name for d in plan.update] == (["running"] if updated_in_place else [])


@pytest.mark.parametrize(
    ("failures", "seconds"), [(0, 1), (1, 1), (2, 2), (3, 4), (6, 30), (50, 30)]
)
def test_restart_backoff(failures: int, seconds: float) -> None:
    assert backoff_s(failures) == seconds
