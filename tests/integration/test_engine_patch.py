"""A pod's engine does not send the PATCH that would write what its run already has
(`_compat.engine_fields`, `run_in_pod_engine_*`): against the real Prefect server.

Prefect's engine PATCHes every run it did not create with the flow's version and retry policy
before it begins it. A pod's direct call creates its run with both (the plain create route), so
that PATCH would change nothing: one write of every direct execution fewer. A run created
without them (the worker's path, any other way) is PATCHed as before, and both end with the same
version and policy on the run. The client's `update_flow_run` is wrapped to count the calls the
engine makes; each still reaches the real server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.flows import Flow
from prefect.states import Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy._compat import (
    created_running,
    engine_fields,
    run_in_pod_engine_async,
    run_in_pod_engine_sync,
)
from prefect_pipedeploy.prefect_api.runs import create_deployment_run
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio


@flow(retries=2, retry_delay_seconds=3)
def sync_step(x: int = 1) -> int:
    return x + 1


@flow
async def async_step(x: int = 1) -> int:
    return x + 1


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with get_client() as client:
        yield client


@pytest.fixture
def patches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[uuid.UUID]]:
    """The run ids the engines PATCH (sync and async clients), each PATCH still sent."""
    seen: list[uuid.UUID] = []
    sync_patch, async_patch = SyncPrefectClient.update_flow_run, PrefectClient.update_flow_run

    def counted_sync(self: SyncPrefectClient, flow_run_id: uuid.UUID, **kwargs: Any) -> Any:
        seen.append(flow_run_id)
        return sync_patch(self, flow_run_id, **kwargs)

    async def counted_async(self: PrefectClient, flow_run_id: uuid.UUID, **kwargs: Any) -> Any:
        seen.append(flow_run_id)
        return await async_patch(self, flow_run_id, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "update_flow_run", counted_sync)
    monkeypatch.setattr(PrefectClient, "update_flow_run", counted_async)
    yield seen


async def run_in_pod(pipeline: Flow[..., Any], run: Any) -> Any:
    if pipeline.isasync:
        return await run_in_pod_engine_async(pipeline, run, {"x": 1})
    return await asyncio.to_thread(run_in_pod_engine_sync, pipeline, run, {"x": 1})


@pytest.mark.parametrize("pipeline", [sync_step, async_step], ids=["def", "async-def"])
@pytest.mark.parametrize("direct", [True, False], ids=["created-with-fields", "created-without"])
async def test_the_engine_patches_a_run_only_when_that_changes_it(
    sdk: PipeDeploy,
    client: PrefectClient,
    patches: list[uuid.UUID],
    pipeline: Flow[..., Any],
    direct: bool,
) -> None:
    created = await sdk.acreate_deployment(f"{PIPELINES}:score", f"patch-{uuid.uuid4().hex[:6]}")
    deployment = await client.read_deployment(uuid.UUID(created["id"]))
    fields = engine_fields(pipeline) if direct else None
    run = await create_deployment_run(
        client,
        deployment,
        parameters={"x": 1},
        tags=["t"],
        state=Running(message="Started by its pod"),
        engine_fields=fields,
    )
    created_running(run.id)  # as a pod's direct call does: the engine does not propose Running
    assert run.flow_version == (pipeline.version if direct else None)

    state = await run_in_pod(pipeline, run)

    assert state.is_completed(), state
    assert patches == ([] if direct else [run.id])  # the PATCH that would change nothing: none
    stored = await client.read_flow_run(run.id)
    assert stored.state is not None and stored.state.is_completed()
    # what the engine writes is on the run either way
    assert stored.flow_version == pipeline.version
    assert stored.empirical_policy.retries == pipeline.retries
    assert stored.empirical_policy.retry_delay == pipeline.retry_delay_seconds


async def test_a_run_changed_before_its_engine_began_is_patched(
    sdk: PipeDeploy, client: PrefectClient, patches: list[uuid.UUID]
) -> None:
    # the skip compares with the run as the engine got it: a run whose version is not the
    # flow's (created from another copy of the code) gets the PATCH
    created = await sdk.acreate_deployment(f"{PIPELINES}:score", f"patch-{uuid.uuid4().hex[:6]}")
    deployment = await client.read_deployment(uuid.UUID(created["id"]))
    fields = {**(engine_fields(async_step) or {}), "flow_version": "another-copy"}
    run = await create_deployment_run(
        client, deployment, parameters={"x": 1}, tags=[], engine_fields=fields
    )
    state = await run_in_pod(async_step, run)
    assert state.is_completed(), state
    assert patches == [run.id]
    assert (await client.read_flow_run(run.id)).flow_version == async_step.version


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0, 0),  # Prefect's default
        (3, 3),
        (2.0, 2),  # a whole number of seconds as a float
        (1.5, None),  # the policy holds whole seconds: the engine writes it
        ([1, 2, 4], None),  # a delay per retry: the engine writes it
    ],
)
def test_engine_fields_table(delay: Any, expected: int | None) -> None:
    pipeline = flow(retries=1, retry_delay_seconds=delay)(lambda: None)
    fields = engine_fields(pipeline)
    if expected is None:
        assert fields is None
        return
    assert fields is not None
    assert fields["flow_version"] == pipeline.version
    assert fields["empirical_policy"].retries == 1
    assert fields["empirical_policy"].retry_delay == expected
