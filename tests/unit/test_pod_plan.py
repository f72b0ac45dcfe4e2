"""The pod supervisor's reconcile plan as values: which pods start and stop, in which order.

Pure: deployments are small in-memory stand-ins with the fields the plan reads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from prefect_pipedeploy.runtimes.low_latency import PodStop, backoff_s, plan_pods, wants_pod

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


def test_unchanged_pods_are_left_alone() -> None:
    kept = Deployment("kept", updated_s=5)
    plan = plan_pods({kept.id: kept.updated}, [kept])
    assert plan.stop == [] and plan.start == []


@pytest.mark.parametrize(
    ("change", "reason", "deleted", "replaced", "restarted"),
    [
        ("deleted", "its deployment was deleted", True, False, False),
        ("paused", "its deployment was disabled or changed mode", False, False, False),
        ("elastic", "its deployment was disabled or changed mode", False, False, False),
        ("updated", "its deployment was updated", False, True, True),
    ],
)
def test_pods_stop_when_their_deployment_changes(
    change: str, reason: str, deleted: bool, replaced: bool, restarted: bool
) -> None:
    running = Deployment("running", updated_s=5)
    started_for = running.updated
    if change == "paused":
        running.paused = True
    elif change == "elastic":
        running.mode = "elastic"
    elif change == "updated":
        running.updated_s = 6
    deployments = [] if change == "deleted" else [running]
    plan = plan_pods({running.id: started_for}, deployments)
    assert plan.stop == [PodStop(running.id, reason, deleted=deleted, replaced=replaced)]
    assert [d.name for d in plan.start] == (["running"] if restarted else [])


@pytest.mark.parametrize(
    ("failures", "seconds"), [(0, 1), (1, 1), (2, 2), (3, 4), (6, 30), (50, 30)]
)
def test_restart_backoff(failures: int, seconds: float) -> None:
    assert backoff_s(failures) == seconds
