"""The gateway's creates (`Gateway.create_execution`, the worker's path) against the real
Prefect server: the run is made from the deployment as it is at the call (read right before,
then Prefect's plain create route, `runs.create_deployment_run`), not from the gateway's table
of endpoints, which may be up to its TTL old; a deployment deleted after the table was read
gets 404 and no run. How the two create routes compare field by field:
tests/integration/test_plain_create.py."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import StateType

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.gateway.answers import GatewayError
from prefect_pipedeploy.gateway.service import Gateway
from tests.support.executions import unique
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio


async def test_a_run_is_made_from_the_deployment_as_it_is_at_the_call(prefect_api: str) -> None:
    pool = f"gw-creates-{uuid.uuid4().hex[:8]}"
    sdk = PipeDeploy(work_pool_name=pool)
    created = await sdk.acreate_deployment(f"{PIPELINES}:counter", unique("gw-creates"))
    async with get_client() as client:
        gateway = Gateway([pool], client)
        try:
            endpoint = (await gateway.endpoints())[created["endpoint_url_path"]]
            deployment = await client.read_deployment(endpoint.deployment_id)
            # changed after the gateway read its table: the run takes the new default and tag
            await client.update_deployment(
                endpoint.deployment_id,
                DeploymentUpdate(
                    parameters={**deployment.parameters, "marker": "fresh"},
                    tags=[*deployment.tags, "changed-after-the-table"],
                ),
            )
            run = await gateway.create_execution(endpoint, {"sleep_s": 0.0})
            assert run.parameters["marker"] == "fresh" and run.parameters["sleep_s"] == 0.0
            assert "changed-after-the-table" in run.tags
            assert run.deployment_id == endpoint.deployment_id
            assert run.state is not None and run.state.type == StateType.SCHEDULED
            assert run.work_pool_name == pool and run.work_queue_name == "default"

            await client.delete_deployment(endpoint.deployment_id)
            with pytest.raises(GatewayError) as refused:
                await gateway.create_execution(endpoint, {"sleep_s": 0.0})
            assert refused.value.status_code == 404
            assert f"no endpoint at {endpoint.path!r}" in refused.value.message
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[endpoint.deployment_id])
                )
            )
            # none made for the deleted deployment (Prefect may have deleted the first with it)
            assert {r.id for r in runs} <= {run.id}
        finally:
            await gateway.close()
