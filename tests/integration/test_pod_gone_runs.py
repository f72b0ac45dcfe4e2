"""What a pod that went down still held, ended by its supervisor against the real server.

No pod process: the pod is a `PodHandle` whose runs the test put in a Pending or Running state,
as a pod that died at that moment leaves them (or created for direct calls, announced by their
idempotency keys and never named); `PodSupervisor` ends them as after a real death.
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
from prefect_pipedeploy.engine.direct import DIRECT_MESSAGE
from prefect_pipedeploy.examples import demo
from prefect_pipedeploy.prefect_api.runs import create_execution
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


async def test_a_run_a_dead_pod_made_for_a_direct_call_but_never_named_ends_crashed(
    pool: str, sdk: PipeDeploy, client: PrefectClient
) -> None:
    """Before: a pod that died after the create of a direct call's run committed, but before
    it told its worker the run ("started"), left the run Running with nobody to end it, and the
    gateway waited for it for good (seen once in test_direct_dispatch's kill test, under load:
    the pod killed before its loop read the create's answer). The pod announces each create's
    idempotency key first ("creating"); the worker ends the runs made with a dead pod's keys,
    and a key whose create never happened finds nothing. Runs of other keys are left alone."""
    created = await sdk.acreate_deployment(
        f"{demo.__file__}:score", unique("pod-gone-direct"), mode="low_latency", max_retries=0
    )
    deployment = await client.read_deployment(uuid.UUID(created["id"]))
    spec = spec_from_job_variables(deployment.job_variables)
    made_key, never_key = (f"pipedeploy-call-{uuid.uuid4()}" for _ in range(2))

    async def direct_run(key: str) -> uuid.UUID:
        """A run created as a pod creates a direct call's (`engine.direct`)."""
        run = await create_execution(
            client,
            deployment.id,
            spec,
            {},
            [],
            state=Running(message=DIRECT_MESSAGE),
            idempotency_key=key,
            deployment=deployment,
        )
        return run.id

    made = await direct_run(made_key)
    elsewhere = await direct_run(f"pipedeploy-call-{uuid.uuid4()}")  # another pod's
    pod = PodHandle(deployment, spec, Path("unused.log"))
    worker = PipeDeployWorker(work_pool_name=pool, ram_capacity="1GiB")
    async with worker:
        for key in (made_key, never_key):
            await worker.pods._on_message(pod, {"event": "creating", "idempotency_key": key})
        assert pod.creating == {made_key, never_key} and not pod.in_flight
        await worker.pods._end_in_flight(pod, "was killed (SIGKILL)", recreated=True)
    crashed = (await client.read_flow_run(made)).state
    assert crashed is not None and crashed.type == StateType.CRASHED, crashed
    assert "was killed (SIGKILL) while running this execution" in (crashed.message or "")
    untouched = (await client.read_flow_run(elsewhere)).state
    assert untouched is not None and untouched.type == StateType.RUNNING, untouched
    assert not pod.creating and not pod.in_flight


async def test_a_direct_calls_key_is_forgotten_once_its_run_is_named_or_not_made(
    pool: str, sdk: PipeDeploy, client: PrefectClient
) -> None:
    """ "started" (with the key) makes the run one the pod holds; "not_created" drops the key:
    a pod that lives on keeps no key of a call that is settled either way."""
    created = await sdk.acreate_deployment(
        f"{demo.__file__}:score", unique("pod-keys"), mode="low_latency", max_retries=0
    )
    deployment = await client.read_deployment(uuid.UUID(created["id"]))
    pod = PodHandle(
        deployment, spec_from_job_variables(deployment.job_variables), Path("unused.log")
    )
    run_id = uuid.uuid4()
    worker = PipeDeployWorker(work_pool_name=pool, ram_capacity="1GiB")
    async with worker:
        for message in (
            {"event": "creating", "idempotency_key": "named"},
            {"event": "creating", "idempotency_key": "refused"},
            {
                "event": "started",
                "flow_run_id": str(run_id),
                "direct": True,
                "idempotency_key": "named",
            },
            {"event": "not_created", "idempotency_key": "refused"},
        ):
            await worker.pods._on_message(pod, message)
    assert pod.creating == set()
    assert pod.in_flight == {run_id} and pod.started == {run_id}
