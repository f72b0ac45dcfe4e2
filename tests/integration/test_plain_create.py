"""A pod's direct call makes its run through Prefect's plain create route
(`runs.create_deployment_run`): against the real server, the run it makes is the run the
create-from-deployment route makes (every field a user, the UI or a worker reads), refusals are
the server's own, and one idempotency key is one run whichever route made it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.prefect_api.runs import create_deployment_run, create_run, plain_create
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

#: What differs between two runs of a deployment whichever route made them.
OWN = {
    "id",
    "name",
    "created",
    "updated",
    "state_id",
    "idempotency_key",
    "expected_start_time",
    "start_time",
    "estimated_run_time",
    "estimated_start_time_delta",
    "next_scheduled_start_time",
}


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with get_client() as client:
        yield client


def comparable(run: FlowRun) -> dict[str, Any]:
    seen = run.model_dump(exclude=OWN)
    state = seen.pop("state")
    seen["tags"] = sorted(seen["tags"])
    seen["state"] = (state["type"], state["name"], state["message"])
    return seen


async def deployment_of(sdk: PipeDeploy, client: PrefectClient, **update: Any) -> Any:
    created = await sdk.acreate_deployment(f"{PIPELINES}:score", f"plain-{uuid.uuid4().hex[:6]}")
    deployment_id = uuid.UUID(created["id"])
    if update:
        await client.update_deployment(deployment_id, DeploymentUpdate(**update))
    return await client.read_deployment(deployment_id)


@pytest.mark.parametrize("state", [None, Running(message="Started by its pod")])
async def test_the_plain_route_makes_the_run_the_deployment_route_makes(
    sdk: PipeDeploy, client: PrefectClient, state: Any
) -> None:
    deployment = await deployment_of(
        sdk, client, tags=["team-a", "pipedeploy"], parameters={"text": "default text"}
    )
    given = {"parameters": {"text": "hello"}, "tags": ["pipedeploy", "call"]}
    assert plain_create(deployment, given["parameters"], given["tags"], state, None) is not None
    by_route = await create_run(client, deployment.id, **given, state=state and state.fresh_copy())
    plain = await create_deployment_run(
        client, deployment, **given, state=state and state.fresh_copy()
    )
    assert comparable(plain) == comparable(by_route)
    assert plain.work_queue_id is not None and plain.deployment_id == deployment.id
    assert sorted(plain.tags) == ["call", "pipedeploy", "team-a"]


async def test_parameters_the_schema_refuses_get_the_servers_own_answer(
    sdk: PipeDeploy, client: PrefectClient
) -> None:
    deployment = await deployment_of(sdk, client, enforce_parameter_schema=True)
    assert deployment.enforce_parameter_schema  # the SDK's deployments leave it off
    wrong = {"text": {"not": "a string"}}
    with pytest.raises(PrefectHTTPStatusError) as by_route:
        await create_run(client, deployment.id, parameters=wrong)
    with pytest.raises(PrefectHTTPStatusError) as plain:
        await create_deployment_run(client, deployment, parameters=wrong)
    assert plain.value.response.status_code == by_route.value.response.status_code == 409
    assert plain.value.response.json() == by_route.value.response.json()


async def test_values_the_server_hydrates_are_hydrated(
    sdk: PipeDeploy, client: PrefectClient
) -> None:
    deployment = await deployment_of(sdk, client)
    hydrated = {"text": {"__prefect_kind": "jinja", "template": "{{ 6 * 7 }}"}}
    run = await create_deployment_run(client, deployment, parameters=hydrated)
    assert run.parameters["text"] == "42"


async def test_one_key_is_one_run_whichever_route_made_it(
    sdk: PipeDeploy, client: PrefectClient
) -> None:
    """The pod makes a direct call's run by the plain route; when its answer is lost, the
    gateway's fallback create (the deployment route) with the same key gets that run back."""
    deployment = await deployment_of(sdk, client)
    key = f"pipedeploy-call-{uuid.uuid4()}"
    by_pod = await create_deployment_run(
        client, deployment, parameters={"text": "a"}, state=Running(), idempotency_key=key
    )
    by_gateway = await create_run(
        client, deployment.id, parameters={"text": "a"}, idempotency_key=key
    )
    assert by_gateway.id == by_pod.id
    assert by_gateway.state is not None and by_gateway.state.is_running()


async def test_arguments_the_plain_route_does_not_carry_take_the_deployment_route(
    sdk: PipeDeploy, client: PrefectClient
) -> None:
    deployment = await deployment_of(sdk, client)
    run = await create_deployment_run(
        client, deployment, parameters={"text": "a"}, job_variables={"env": {"A": "1"}}
    )
    assert run.job_variables == {"env": {"A": "1"}}
