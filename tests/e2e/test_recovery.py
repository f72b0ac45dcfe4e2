"""Nothing is lost: a run a dead worker claimed is re-queued by the next worker; pod events."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Pending
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.processes import start_worker


def test_run_left_pending_by_a_dead_worker_is_recovered(
    prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pool = unique("orphan-pool")
    sdk = PipeDeploy(work_pool_name=pool)
    name = unique("orphan")
    sdk.create_deployment(f"{PIPELINES}:score", name, max_retries=0)
    execution = sdk.run_deployment(name, {"text": "recovered run"}, wait_for_completion=False)

    async def claim() -> None:  # what a worker does right before it dies
        async with get_client() as client:
            await client.set_flow_run_state(uuid.UUID(execution["execution_id"]), Pending())

    run_coro_as_sync(claim())
    time.sleep(2.5)
    worker = start_worker(
        pool,
        tmp_path_factory.mktemp("late-worker"),
        env={"PREFECT_INTEGRATIONS_PIPEDEPLOY_PENDING_RECOVERY_S": "2"},
    )
    try:
        run_coro_as_sync(sdk.await_execution(execution["execution_id"], 90))
        result = sdk.get_pipeline_execution(execution["execution_id"])
        assert result["status"] == "Succeeded"
        assert result["outputs"] == {"words": 2, "score": 6.0}
    finally:
        worker.stop()


def test_pod_state_changes_are_prefect_events(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = unique("evented")
    sdk.create_deployment(f"{PIPELINES}:counter", name, mode="low_latency")
    deployment_id = wait_until_up(sdk, name)["id"]

    async def pod_events() -> list[str]:
        async with get_client() as client:
            response = await client.request(
                "POST",
                "/events/filter",
                json={
                    "filter": {
                        "event": {"prefix": ["prefect-pipedeploy.pod."]},
                        "related": {"id": [f"prefect.deployment.{deployment_id}"]},
                    },
                    "limit": 50,
                },
            )
            return [event["event"] for event in response.json()["events"]]

    eventually(
        lambda: run_coro_as_sync(pod_events()),
        30,
        0.5,
        until=lambda events: "prefect-pipedeploy.pod.ready" in events,
    )
    sdk.delete_deployment(name)
