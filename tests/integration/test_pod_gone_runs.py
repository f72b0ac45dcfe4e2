"""What a pod that went down still held, ended by its supervisor against the real server.

No pod process: the pod is a `PodHandle` whose runs the test put in a Pending or Running state,
as a pod that died at that moment leaves them; `PodSupervisor` ends them as after a real death.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Pending, Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.examples import demo
from prefect_pipedeploy.runtimes.low_latency import PodHandle
from prefect_pipedeploy.spec import spec_from_job_variables
from prefect_pipedeploy.worker import PipeDeployWorker
from tests.support.executions import unique

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with get_client() as client:
        yield client


async def test_a_run_a_dead_pod_began_but_never_ran_goes_back_to_the_queue(
    pool: str, sdk: PipeDeploy, client: PrefectClient
) -> None:
    """Before: a run the pod had begun (it had said "started" and was fetching its inputs) but
    that was still Pending when the pod died ended Crashed with run_count 0, so it was never
    retried, whatever its retries (a failed execution in the 300 s chaos soak, seed 7). Now it
    goes back to the queue like a run the pod never began; a run that was running ends Crashed,
    saying why."""
    created = await sdk.acreate_deployment(
        f"{demo.__file__}:score", unique("pod-gone"), mode="low_latency", max_retries=0
    )
    deployment = await client.read_deployment(uuid.UUID(created["id"]))
    begun = await client.create_flow_run_from_deployment(deployment.id)
    await client.set_flow_run_state(begun.id, Pending(), force=True)
    running = await client.create_flow_run_from_deployment(deployment.id)
    for state in (Pending(), Running()):
        await client.set_flow_run_state(running.id, state, force=True)
    pod = PodHandle(
        deployment, spec_from_job_variables(deployment.job_variables), Path("unused.log")
    )
    pod.in_flight = {begun.id, running.id}
    pod.started = {begun.id, running.id}
    worker = PipeDeployWorker(work_pool_name=pool, ram_capacity="1GiB")
    async with worker:
        await worker.pods._end_in_flight(pod, "was killed (SIGKILL)", recreated=True)
    requeued = (await client.read_flow_run(begun.id)).state
    assert requeued is not None and requeued.type == StateType.SCHEDULED, requeued
    assert requeued.name == "Requeued" and "before it began" in (requeued.message or "")
    crashed = (await client.read_flow_run(running.id)).state
    assert crashed is not None and crashed.type == StateType.CRASHED, crashed
    assert "was killed (SIGKILL) while running this execution" in (crashed.message or "")
    assert not pod.in_flight
