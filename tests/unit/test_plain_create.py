"""`runs.plain_create`: when Prefect's plain create route makes the run the deployment route
would, and the body it sends (and what it must not load into pods); `direct.same_version`: when a pod's copy of its deployment may make
a direct call's run (table-driven; the runs themselves are compared against a real server in
tests/integration/test_plain_create.py)."""

from __future__ import annotations

import datetime
import subprocess
import sys
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Running

from prefect_pipedeploy.engine.direct import same_version
from prefect_pipedeploy.prefect_api.runs import plain_create

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
UPDATED = datetime.datetime(2026, 12, 4, 15, 0, 0, 123456, tzinfo=datetime.timezone.utc)


def deployment(**fields: Any) -> DeploymentResponse:
    base: dict[str, Any] = {
        "id": uuid.uuid4(),
        "name": "d",
        "flow_id": uuid.uuid4(),
        "work_pool_name": "pool",
        "work_queue_name": "default",
        "parameter_openapi_schema": SCHEMA,
        "enforce_parameter_schema": False,  # as the SDK makes them
        "updated": UPDATED,
    }
    return DeploymentResponse(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "parameters", "why"),
    [
        ({"version": "1.2"}, {"x": 1}, "the run records its deployment's version"),
        ({"work_pool_name": None}, {"x": 1}, "no work pool"),
        ({"work_queue_name": None}, {"x": 1}, "no work queue"),
        ({"enforce_parameter_schema": True}, {"x": 1}, "the server checks the schema"),
        ({"enforce_parameter_schema": True}, {"x": "one"}, "and answers a refusal its own way"),
        ({}, {"x": 1, "y": {"__prefect_kind": "json", "value": "[1]"}}, "the server hydrates"),
        (
            {"parameters": {"y": {"__prefect_kind": "jinja", "template": "{{ 1 }}"}}},
            {"x": 1},
            "its",
        ),
    ],
)
def test_the_deployment_route_makes_the_run(
    fields: dict[str, Any], parameters: dict[str, Any], why: str
) -> None:
    assert plain_create(deployment(**fields), parameters, [], None, None) is None, why


def test_the_plain_body_is_the_run_the_deployment_route_makes() -> None:
    d = deployment(tags=["team", "b"], parameters={"x": 0, "y": "default"})
    body = plain_create(d, {"x": 3}, ["pipedeploy", "b"], Running(message="m"), "key-1")
    assert body is not None
    assert body.model_dump(exclude_unset=True, exclude={"state"}) == {
        "flow_id": d.flow_id,
        "deployment_id": d.id,
        "parameters": {"x": 3, "y": "default"},  # the deployment's defaults under the caller's
        "tags": ["b", "pipedeploy", "team"],  # the deployment's with the caller's, once each
        "idempotency_key": "key-1",
        "work_pool_name": "pool",
        "work_queue_name": "default",
    }
    assert body.state is not None
    assert (body.state.type, body.state.message) == (StateType.RUNNING, "m")


def test_without_a_state_the_run_is_scheduled_as_the_deployment_route_makes_it() -> None:
    body = plain_create(deployment(), {"x": 1}, [], None, None)
    assert body is not None and body.state is not None
    assert body.state.type == StateType.SCHEDULED


def test_an_unenforced_schema_is_not_checked() -> None:
    d = deployment(parameter_openapi_schema=None)
    body = plain_create(d, {"x": "anything"}, [], None, None)
    assert body is not None and body.parameters == {"x": "anything"}


def test_pods_and_execution_processes_do_not_load_prefects_schema_validation() -> None:
    """It costs 20 MiB of RSS (101 -> 121 MiB for a pod at rest): a pod or an execution of
    128 MiB then exceeded its RAM request and was stopped (a `plain_create` that checked the
    parameter schema itself did that, in CI)."""
    code = (
        "import sys, prefect_pipedeploy.engine.pod, prefect_pipedeploy.engine.elastic; "
        "print(sorted(m for m in sys.modules if m.startswith('prefect.utilities.schema_tools')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "prefect.utilities.schema_tools.validation" not in loaded, loaded


@pytest.mark.parametrize(
    ("stamp", "pod_updated", "same"),
    [
        (UPDATED.isoformat(), UPDATED, True),
        (
            UPDATED.astimezone(datetime.timezone(datetime.timedelta(hours=2))).isoformat(),
            UPDATED,
            True,
        ),
        ((UPDATED + datetime.timedelta(microseconds=1)).isoformat(), UPDATED, False),
        ((UPDATED - datetime.timedelta(seconds=5)).isoformat(), UPDATED, False),
        (None, UPDATED, False),  # an older gateway sends none
        (UPDATED.isoformat(), None, False),
        ("not a time", UPDATED, False),
        (17, UPDATED, False),
    ],
)
def test_the_pod_makes_a_direct_run_from_its_copy_only_when_the_gateway_read_the_same(
    stamp: Any, pod_updated: datetime.datetime | None, same: bool
) -> None:
    pod: Any = SimpleNamespace(deployment=SimpleNamespace(updated=pod_updated))
    assert same_version(pod, {"deployment_updated": stamp}) is same
