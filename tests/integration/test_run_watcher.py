"""The gateway's `RunWatcher` learns that executions settled from Prefect's event stream, and
polls only while that stream is down (issue 14: it polled every 0.15 s before).

A real Prefect server; runs of a deployment no worker serves, moved by the test as a worker
would move them.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Pending, Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.gateway.waiting import RunWatcher
from prefect_pipedeploy.stack import free_port
from tests.support.paths import PIPELINES

NEVER_S = 3600.0


@pytest.fixture(scope="module")
def deployment_id(prefect_api: str) -> uuid.UUID:
    sdk = PipeDeploy(work_pool_name=f"idle-{uuid.uuid4().hex[:6]}")  # no worker
    created = sdk.create_deployment(f"{PIPELINES}:score", f"watched-{uuid.uuid4().hex[:6]}")
    return uuid.UUID(created["id"])


async def until(condition: object, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def complete_later(client: PrefectClient, run_id: uuid.UUID, after_s: float) -> None:
    await asyncio.sleep(after_s)
    await client.set_flow_run_state(run_id, Running(), force=True)
    await client.set_flow_run_state(run_id, Completed(), force=True)


@pytest.mark.anyio
async def test_runs_settle_on_their_events_without_any_poll(deployment_id: uuid.UUID) -> None:
    """No fallback and no safety poll within the test: only the events can settle the runs.
    Several calls wait at once; each is answered when its own run completes."""
    async with get_client() as client:
        watcher = RunWatcher(client, fallback_s=NEVER_S, safety_s=NEVER_S)
        try:
            runs = [await client.create_flow_run_from_deployment(deployment_id) for _ in range(3)]
            waits = [asyncio.create_task(watcher.wait(run.id, 0, timeout_s=60)) for run in runs]
            await until(lambda: watcher.live)
            await asyncio.sleep(0.3)
            assert not any(wait.done() for wait in waits)  # still Scheduled
            await complete_later(client, runs[1].id, 0)
            latest, done = await asyncio.wait_for(waits[1], 30)
            assert done and latest is not None and latest.state is not None
            assert latest.state.is_completed()
            assert not waits[0].done() and not waits[2].done()
            for run in (runs[0], runs[2]):
                await complete_later(client, run.id, 0)
            for wait in (waits[0], waits[2]):
                latest, done = await asyncio.wait_for(wait, 30)
                assert done and latest is not None and latest.state is not None
                assert latest.state.is_completed()
        finally:
            await watcher.close()


@pytest.mark.anyio
async def test_a_run_is_read_again_only_when_it_reaches_a_final_state(
    deployment_id: uuid.UUID,
) -> None:
    """The watcher subscribes to final-state events only (`waiting.FINAL_STATES`). Before, it
    got every flow-run event of the server, so each execution's Scheduled, Pending and Running
    were sent to every gateway, and a watched run was read again at each. Here one watched run
    goes Pending and Running; a second one completes after that (its event comes after theirs
    on the stream): no read names the first run until it completes, and then it settles."""
    async with get_client() as client:
        read_ids: list[set[uuid.UUID]] = []
        read = client.read_flow_runs

        async def recording_read(**kwargs: object) -> object:
            run_filter = kwargs["flow_run_filter"]
            assert isinstance(run_filter, FlowRunFilter) and run_filter.id is not None
            read_ids.append(set(run_filter.id.any_ or []))
            return await read(**kwargs)  # type: ignore[arg-type]

        client.read_flow_runs = recording_read  # type: ignore[method-assign]
        watcher = RunWatcher(client, fallback_s=NEVER_S, safety_s=NEVER_S)
        try:
            moving, marker = [
                await client.create_flow_run_from_deployment(deployment_id) for _ in "ab"
            ]
            waits = {marker.id: asyncio.create_task(watcher.wait(marker.id, 0, timeout_s=60))}
            await until(lambda: watcher.live)
            await asyncio.sleep(0.5)  # the read of the watched runs when the stream came up
            waits[moving.id] = asyncio.create_task(watcher.wait(moving.id, 0, timeout_s=60))
            await until(lambda: any(moving.id in ids for ids in read_ids))  # its first read
            since = len(read_ids)
            await client.set_flow_run_state(moving.id, Pending(), force=True)
            await client.set_flow_run_state(moving.id, Running(), force=True)
            await complete_later(client, marker.id, 0)
            latest, done = await asyncio.wait_for(waits[marker.id], 30)
            assert done and latest is not None and latest.id == marker.id
            assert not any(moving.id in ids for ids in read_ids[since:]), read_ids[since:]
            assert not waits[moving.id].done()
            await client.set_flow_run_state(moving.id, Completed(), force=True)
            latest, done = await asyncio.wait_for(waits[moving.id], 30)
            assert done and latest is not None and latest.state is not None
            assert latest.state.is_completed()
        finally:
            await watcher.close()


@pytest.mark.anyio
async def test_a_run_settled_before_it_was_watched_is_answered_at_once(
    deployment_id: uuid.UUID,
) -> None:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(deployment_id)
        await complete_later(client, run.id, 0)
        watcher = RunWatcher(client, fallback_s=NEVER_S, safety_s=NEVER_S)
        try:
            latest, done = await watcher.wait(run.id, 0, timeout_s=30)
        finally:
            await watcher.close()
    assert done and latest is not None and latest.state is not None
    assert latest.state.is_completed()


@pytest.mark.anyio
async def test_while_the_event_stream_is_down_it_polls(deployment_id: uuid.UUID) -> None:
    """The stream's address refuses connections (PREFECT_API_URL of the subscription points at
    a closed port; the client reads the real server): the run still settles, by the poll."""
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(deployment_id)
        with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
            watcher = RunWatcher(client, fallback_s=0.2, safety_s=NEVER_S)
            try:
                completing = asyncio.create_task(complete_later(client, run.id, 1.0))
                latest, done = await watcher.wait(run.id, 0, timeout_s=30)
                await completing
                assert not watcher.live
            finally:
                await watcher.close()
    assert done and latest is not None and latest.state is not None
    assert latest.state.is_completed()
