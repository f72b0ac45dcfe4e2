"""Sealed secret values of runs deleted before they ran are deleted too, against the real server.

Before: `discard` ran only when a run reached its final state, so a secret sealed for a run that
was deleted while it waited stayed in the server's blocks for ever.
"""

from __future__ import annotations

import uuid

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.prefect_api.runs import create_execution
from prefect_pipedeploy.prefect_api.sealed import BLOCK_PREFIX, sealed_keys, sweep_sealed
from prefect_pipedeploy.spec import spec_from_job_variables
from tests.support.executions import unique
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio


async def test_a_deleted_runs_sealed_value_is_swept_and_a_live_runs_is_kept(
    sdk: PipeDeploy,
) -> None:
    created = await sdk.acreate_deployment(
        f"{PIPELINES}:greet",
        unique("sealed"),
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name"),
            InputSource(pipeline_input_name="api_key", endpoint_input_name="key", is_secret=True),
        ],
    )
    async with get_client() as client:
        deployment = await client.read_deployment(uuid.UUID(created["id"]))
        spec = spec_from_job_variables(deployment.job_variables)
        deleted = await create_execution(
            client, deployment.id, spec, {"name": "a", "api_key": "s1"}, []
        )
        kept = await create_execution(
            client, deployment.id, spec, {"name": "b", "api_key": "s2"}, []
        )
        (deleted_key,) = sealed_keys(deleted.parameters)
        (kept_key,) = sealed_keys(kept.parameters)
        await client.delete_flow_run(deleted.id)
        assert await sweep_sealed(client, older_than_s=0) >= 1
        with pytest.raises(ValueError):
            await Secret.aload(BLOCK_PREFIX + deleted_key, client=client)
        assert (await Secret.aload(BLOCK_PREFIX + kept_key, client=client)).get() == "s2"
        assert await sweep_sealed(client, older_than_s=3600) == 0  # young values are left alone
