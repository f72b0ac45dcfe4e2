"""`prefect_api.runs.fail_run` / `crash_run` on real runs: Scheduled -> Failed, Running ->
Crashed, and a run already final left alone (the server itself would let Completed become
Failed), unless a caller replaces a Crashed it caused (`over_crash`)."""

from __future__ import annotations

import uuid
from uuid import UUID

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Completed, Crashed, Failed, Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.prefect_api.runs import crash_run, fail_run
from tests.support.paths import PIPELINES

DEMO = PIPELINES


async def new_run(client: PrefectClient, deployment_id: UUID, *states: object) -> UUID:
    run = await client.create_flow_run_from_deployment(deployment_id)
    for state in states:
        await client.set_flow_run_state(run.id, state, force=True)  # type: ignore[arg-type]
    return run.id


async def state_of(client: PrefectClient, run_id: UUID) -> tuple[StateType, str | None]:
    state = (await client.read_flow_run(run_id)).state
    assert state is not None
    return state.type, state.message


@pytest.mark.anyio
async def test_fail_and_crash_a_run(prefect_api: str, sdk: PipeDeploy) -> None:
    name = f"end-run-{uuid.uuid4().hex[:6]}"
    await sdk.acreate_deployment(f"{DEMO}:score", name)
    async with get_client() as client:
        deployment_id = (await client.read_deployment_by_name(f"score/{name}")).id

        scheduled = await new_run(client, deployment_id)
        assert await fail_run(client, scheduled, "its inputs could not be resolved") is True
        assert await state_of(client, scheduled) == (
            StateType.FAILED,
            "its inputs could not be resolved",
        )

        running = await new_run(client, deployment_id, Running())
        assert await crash_run(client, running, "its pod died") is True
        assert await state_of(client, running) == (StateType.CRASHED, "its pod died")

        completed = await new_run(client, deployment_id, Running(), Completed())
        assert await fail_run(client, completed, "too late") is False
        assert await crash_run(client, completed, "too late") is False
        assert (await state_of(client, completed))[0] == StateType.COMPLETED

        failed = await new_run(client, deployment_id, Running(), Failed(message="its own"))
        assert await crash_run(client, failed, "the pod died afterwards") is False
        assert await fail_run(client, failed, "again") is False
        assert await state_of(client, failed) == (StateType.FAILED, "its own")

        # a run whose engine the caller cancelled (a pod's timeout) ends Crashed by Prefect's
        # engine; the caller's cause replaces that, and only that
        cancelled = await new_run(client, deployment_id, Running(), Crashed(message="cancelled"))
        assert await fail_run(client, cancelled, "timed out") is False
        assert await fail_run(client, cancelled, "timed out", over_crash=True) is True
        assert await state_of(client, cancelled) == (StateType.FAILED, "timed out")
        assert await fail_run(client, completed, "timed out", over_crash=True) is False

        assert await fail_run(client, uuid.uuid4(), "no such run") is False
        assert await crash_run(client, uuid.uuid4(), "no such run") is False
