"""The endpoint path of a deployment: one rule (`DeploymentSpec.endpoint_path`) that the
gateway's table, the SDK's views and the trigger automations all read."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.gateway.endpoints import endpoint_of, endpoint_table
from prefect_pipedeploy.prefect_api.triggers import endpoint_path_of
from prefect_pipedeploy.sdk.views import deployment_view
from prefect_pipedeploy.spec import build_spec

PERIODIC = {"execution_rule": "periodic", "schedule": {"type": "basic", "every": 1}}


@pytest.mark.parametrize(
    ("name", "settings", "path"),
    [
        ("score", {}, "score"),  # `prefect deploy` without settings: an endpoint at its name
        ("score", {"execution_rule": "endpoint"}, "score"),
        ("score", {"endpoint_url_path": "team/score"}, "team/score"),
        ("score", {"endpoint_url_path": "/team/score/"}, "team/score"),
        ("score", {"endpoint_url_path": "v1"}, "v1"),
        ("/score/", {}, "score"),  # a name never brings its slashes into the path
        ("nightly", PERIODIC, None),
    ],
)
def test_endpoint_path(name: str, settings: dict[str, Any], path: str | None) -> None:
    assert build_spec(**settings).endpoint_path(name) == path


def deployment(name: str, job_variables: dict[str, Any]) -> DeploymentResponse:
    return DeploymentResponse(
        id=uuid.uuid4(), name=name, flow_id=uuid.uuid4(), job_variables=job_variables
    )


@pytest.mark.parametrize(
    ("name", "job_variables", "path"),
    [
        ("score", {}, "score"),
        ("score", {"endpoint_url_path": "team/score"}, "team/score"),
        ("score", {"endpoint_url_path": "/team/score/"}, "team/score"),
        ("nightly", PERIODIC, None),
    ],
)
def test_every_reader_agrees(name: str, job_variables: dict[str, Any], path: str | None) -> None:
    d = deployment(name, job_variables)
    served = endpoint_of(d)
    assert (served.path if served else None) == path  # the gateway serves it there
    assert deployment_view(d)["endpoint_url_path"] == path  # the SDK shows it
    assert endpoint_path_of(d) == path  # its trigger automation names it


def test_a_deployment_with_invalid_settings_has_no_path() -> None:
    broken = deployment("broken", {"ram_request": "lots"})
    assert endpoint_path_of(broken) is None
    table, problems = endpoint_table([broken])
    assert table == {} and "settings are invalid" in problems[0]
