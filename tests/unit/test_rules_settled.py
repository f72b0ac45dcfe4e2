"""`status.settled`: the one rule for "is an execution final", with its one retry grace."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType

from prefect_pipedeploy.settings import PipeDeploySettings
from prefect_pipedeploy.status import settled

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
GRACE_S = 10.0


def run(state_type: StateType | None, run_count: int = 1, age_s: float = 0.0) -> FlowRun:
    """A flow run whose state was set `age_s` before NOW."""
    state = (
        State(type=state_type, timestamp=NOW - timedelta(seconds=age_s))
        if state_type is not None
        else None
    )
    return FlowRun(flow_id=uuid.uuid4(), state=state, run_count=run_count)


@pytest.mark.parametrize(
    ("state_type", "run_count", "age_s", "max_retries", "expected"),
    [
        # not final yet
        (None, 0, 0, 1, False),
        (StateType.SCHEDULED, 0, 0, 1, False),
        (StateType.PENDING, 0, 0, 1, False),
        (StateType.RUNNING, 1, 0, 1, False),
        (StateType.PAUSED, 1, 0, 1, False),
        (StateType.CANCELLING, 1, 0, 1, False),
        # final, and never retried
        (StateType.COMPLETED, 1, 0, 1, True),
        (StateType.CANCELLED, 1, 0, 1, True),
        (StateType.FAILED, 1, 0, 0, True),  # no retries configured
        (StateType.FAILED, 2, 0, 1, True),  # retries used up
        (StateType.CRASHED, 4, 0, 3, True),
        (StateType.FAILED, 0, 0, 3, True),  # failed before it started (inputs): no retry
        # failed with attempts left: the worker is about to queue the retry
        (StateType.FAILED, 1, 0, 1, False),
        (StateType.CRASHED, 1, 0, 1, False),
        (StateType.FAILED, 2, 5.0, 3, False),  # the SDK's old 5 s grace: not yet
        (StateType.FAILED, 1, GRACE_S - 0.01, 1, False),
        # ... until the grace is over with no retry
        (StateType.FAILED, 1, GRACE_S, 1, True),
        (StateType.CRASHED, 3, GRACE_S + 30, 3, True),
    ],
)
def test_settled(
    state_type: StateType | None, run_count: int, age_s: float, max_retries: int, expected: bool
) -> None:
    assert settled(run(state_type, run_count, age_s), max_retries, NOW, GRACE_S) is expected


def test_the_default_grace_is_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 s unless PREFECT_INTEGRATIONS_PIPEDEPLOY_RETRY_GRACE_S says otherwise, read per call."""
    monkeypatch.delenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_RETRY_GRACE_S", raising=False)
    assert PipeDeploySettings().retry_grace_s == 10.0
    failed_9s_ago = run(StateType.FAILED, 1, 9.0)
    assert settled(failed_9s_ago, 1, NOW) is False
    monkeypatch.setenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_RETRY_GRACE_S", "2.5")
    assert settled(failed_9s_ago, 1, NOW) is True
    assert settled(run(StateType.FAILED, 1, 2.0), 1, NOW) is False
