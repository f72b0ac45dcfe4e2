"""seal -> create -> discard, in one place (`prefect_api.runs.create_execution`): a create that
fails (the deployment deleted meanwhile) leaves no `pipedeploy-sealed-*` block behind, whether
the SDK or the gateway made the call."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.states import Running

from prefect_pipedeploy import DeploymentNotFound, PipeDeploy
from prefect_pipedeploy.gateway import service
from prefect_pipedeploy.gateway.app import create_app
from prefect_pipedeploy.gateway.service import Gateway
from prefect_pipedeploy.prefect_api.runs import create_execution
from prefect_pipedeploy.prefect_api.sealed import BLOCK_PREFIX, REFERENCE_PREFIX
from prefect_pipedeploy.spec import spec_from_job_variables
from tests.support.paths import PIPELINES

DEMO = PIPELINES
SECRET_TEXT = [
    {
        "pipeline_input_name": "text",
        "endpoint_input_name": "text",
        "data_type": "string",
        "is_secret": True,
    }
]


async def sealed_blocks(client: PrefectClient) -> set[str]:
    """The names of every sealed value on the server."""
    names: set[str] = set()
    offset = 0
    while True:
        try:
            page = await client.read_block_documents_by_type(
                "secret", offset=offset, limit=200, include_secrets=False
            )
        except ObjectNotFound:  # no Secret block was ever saved
            return names
        names |= {d.name for d in page if d.name and d.name.startswith(BLOCK_PREFIX)}
        if len(page) < 200:
            return names
        offset += len(page)


async def secret_deployment(sdk: PipeDeploy) -> dict[str, Any]:
    name = f"sealed-{uuid.uuid4().hex[:6]}"
    return await sdk.acreate_deployment(f"{DEMO}:score", name, inputs_mapping=SECRET_TEXT)


class DeletesMeanwhile(PipeDeploy):
    """The SDK, with its deployment deleted right after the SDK read it."""

    async def _deployment(self, client: PrefectClient, name: str) -> DeploymentResponse:
        deployment = await super()._deployment(client, name)
        await client.delete_deployment(deployment.id)
        return deployment


@pytest.mark.anyio
async def test_the_sdk_discards_the_sealed_value_of_a_failed_create(
    prefect_api: str, pool: str
) -> None:
    sdk = PipeDeploy(work_pool_name=pool)
    kept = await secret_deployment(sdk)
    async with get_client() as client:
        before = await sealed_blocks(client)
        # a create that succeeds keeps its sealed value: the run reads it
        made = await sdk.arun_deployment(kept["name"], {"text": "s3cret"}, False)
        reference = made["parameters"]["text"]
        assert reference.startswith(REFERENCE_PREFIX)
        after_success = await sealed_blocks(client)
        assert after_success - before == {BLOCK_PREFIX + reference.removeprefix(REFERENCE_PREFIX)}

        doomed = await secret_deployment(sdk)
        with pytest.raises(DeploymentNotFound, match="was deleted before its execution"):
            await DeletesMeanwhile(work_pool_name=pool).arun_deployment(
                doomed["name"], {"text": "s3cret"}, False
            )
        assert await sealed_blocks(client) == after_success


@pytest.mark.anyio
async def test_the_gateway_discards_the_sealed_value_of_a_failed_create(
    prefect_api: str, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk = PipeDeploy(work_pool_name=pool)
    doomed = await secret_deployment(sdk)
    # the gateway keeps serving the endpoint it read until its cache expires
    monkeypatch.setattr(service, "ENDPOINT_CACHE_TTL_S", 3600.0)
    async with get_client() as client:
        gateway = Gateway([pool], client)
        assert doomed["endpoint_url_path"] in await gateway.endpoints()
        await sdk.adelete_deployment(doomed["name"])
        before = await sealed_blocks(client)
        app = create_app([pool], gateway=gateway)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                response = await http.post(
                    f"/endpoints/{doomed['endpoint_url_path']}",
                    json={"text": "s3cret"},
                    headers={"Authorization": f"EndpointToken {doomed['endpoint_token']}"},
                )
        finally:
            await gateway.close()
        assert response.status_code == 404, response.text
        assert "no endpoint at" in response.json()["message"]
        assert await sealed_blocks(client) == before


@pytest.mark.anyio
async def test_a_second_create_with_the_call_key_gives_back_the_first_run(
    prefect_api: str, pool: str
) -> None:
    """Direct dispatch: a pod that created a call's run Running and whose answer was lost; the
    gateway's fallback create with the same key gets that run back, not a second one."""
    sdk = PipeDeploy(work_pool_name=pool)
    created = await sdk.acreate_deployment(f"{DEMO}:score", f"keyed-{uuid.uuid4().hex[:6]}")
    deployment_id = uuid.UUID(created["id"])
    key = f"pipedeploy-call-{uuid.uuid4()}"
    async with get_client() as client:
        deployment = await client.read_deployment(deployment_id)
        spec = spec_from_job_variables(deployment.job_variables)
        by_pod = await create_execution(
            client, deployment_id, spec, {}, ["t"], state=Running(), idempotency_key=key
        )
        by_gateway = await create_execution(
            client, deployment_id, spec, {}, ["t"], idempotency_key=key
        )
        assert by_gateway.id == by_pod.id
        assert by_gateway.state is not None and by_gateway.state.is_running()
        other = await create_execution(client, deployment_id, spec, {}, ["t"])
        assert other.id != by_pod.id
