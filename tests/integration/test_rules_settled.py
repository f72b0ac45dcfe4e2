"""One retry grace: a failed run with retries left and no worker to retry it is reported final
by the SDK's `await_execution` and by the gateway's `RunWatcher` after the same grace, not before.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.states import Failed, Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.gateway.waiting import RunWatcher
from tests.support.paths import PIPELINES

DEMO = PIPELINES
GRACE_S = 3.0
MAX_RETRIES = 2


@pytest.fixture
def short_grace(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_RETRY_GRACE_S", str(GRACE_S))
    return GRACE_S


async def failed_with_retries_left(sdk: PipeDeploy) -> FlowRun:
    """A run of a deployment (max_retries=2) that ran once and failed; no worker serves its pool."""
    name = f"grace-{uuid.uuid4().hex[:6]}"
    await sdk.acreate_deployment(f"{DEMO}:score", name, max_retries=MAX_RETRIES)
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"score/{name}")
        run = await client.create_flow_run_from_deployment(deployment.id)
        await client.set_flow_run_state(run.id, Running(), force=True)
        await client.set_flow_run_state(run.id, Failed(message="it failed"), force=True)
        run = await client.read_flow_run(run.id)
    assert run.run_count == 1 and run.state is not None and run.state.is_failed()
    return run


def since_failed(run: FlowRun) -> float:
    assert run.state is not None
    return (datetime.now(timezone.utc) - run.state.timestamp).total_seconds()


@pytest.mark.anyio
async def test_sdk_and_gateway_report_a_failed_run_final_after_the_same_grace(
    prefect_api: str, sdk: PipeDeploy, short_grace: float
) -> None:
    run = await failed_with_retries_left(sdk)
    settled_after: dict[str, float] = {}

    async def sdk_waits() -> None:
        await sdk.await_execution(run.id, timeout_s=30)
        settled_after["sdk"] = since_failed(run)

    async with get_client() as client:
        watcher = RunWatcher(client)
        try:
            # not before: within the grace the gateway still waits for the retry
            _, done = await watcher.wait(run.id, MAX_RETRIES, timeout_s=short_grace / 3)
            assert not done and since_failed(run) < short_grace

            async def gateway_waits() -> None:
                latest, done = await watcher.wait(run.id, MAX_RETRIES, timeout_s=30)
                assert done and latest is not None and latest.state is not None
                assert latest.state.is_failed()
                settled_after["gateway"] = since_failed(run)

            started = time.monotonic()
            async with anyio.create_task_group() as both:
                both.start_soon(sdk_waits)
                both.start_soon(gateway_waits)
        finally:
            await watcher.close()
    # after the grace, and both at about the same moment (the SDK polls every 0.1 s, the
    # gateway reads the run again when its grace ends, plus the API's answer time on a loaded
    # machine)
    assert short_grace <= settled_after["sdk"] < short_grace + 3, settled_after
    assert short_grace <= settled_after["gateway"] < short_grace + 3, settled_after
    assert abs(settled_after["sdk"] - settled_after["gateway"]) < 1.5, settled_after
    assert time.monotonic() - started < short_grace + 3
    execution = await sdk.aget_pipeline_execution(run.id)
    assert execution["status"] == "Failed" and execution["attempts"] == 1
