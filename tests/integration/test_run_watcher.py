"""The gateway's `RunWatcher` learns that executions settled from Prefect's event stream, and
polls only while that stream is down (issue 14: it polled every 0.15 s before).

A real Prefect server; runs of a deployment no worker serves, moved by the test as a worker
would move them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Pending, Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.gateway.waiting import (
    STALE_RECHECK_S,
    STALE_RECHECKS,
    RunWatcher,
    read_before_event,
)
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


async def racing_watch(
    client: PrefectClient, deployment_id: uuid.UUID, stale_answers: int
) -> tuple[RunWatcher, uuid.UUID, asyncio.Task, list[int]]:
    """A watched run, Running, and a client whose next `stale_answers` reads of it, once the
    run is being completed, answer as a read from before that write would: the run as it was
    read just before (the race Prefect's server leaves open: it sends a state's event from
    inside the transaction that writes the state). The list counts the reads after the write."""
    run = await client.create_flow_run_from_deployment(deployment_id)
    await client.set_flow_run_state(run.id, Running(), force=True)
    before = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
    )
    read = client.read_flow_runs
    reads_after = [0]

    async def racing_read(**kwargs: object) -> object:
        if completing.is_set():
            reads_after[0] += 1
            if reads_after[0] <= stale_answers:
                return before
        return await read(**kwargs)  # type: ignore[arg-type]

    completing = asyncio.Event()
    client.read_flow_runs = racing_read  # type: ignore[method-assign]
    watcher = RunWatcher(client, fallback_s=NEVER_S, safety_s=NEVER_S)
    wait = asyncio.create_task(watcher.wait(run.id, 0, timeout_s=20))
    await until(lambda: watcher.live)
    await asyncio.sleep(0.5)  # the read of the watched run when the stream came up
    completing.set()  # before the write: its event is what makes the watcher read
    await client.set_flow_run_state(run.id, Completed(), force=True)
    return watcher, run.id, wait, reads_after


@pytest.mark.anyio
async def test_a_read_that_came_before_the_final_states_write_is_made_again(
    deployment_id: uuid.UUID,
) -> None:
    """Seen on PostgreSQL: the read right after a run's Completed event showed it Running. Here
    the first two reads after the event answer as such a read: the watcher reads again within
    STALE_RECHECK_S each time, and the call settles on the third. Before: no event came again,
    and the call waited for the next safety read (5 s; never, here)."""
    async with get_client() as client:
        watcher, _, wait, reads_after = await racing_watch(client, deployment_id, 2)
        try:
            latest, done = await asyncio.wait_for(wait, 30)
        finally:
            await watcher.close()
    assert done and latest is not None and latest.state is not None
    assert latest.state.is_completed()
    assert reads_after == [3]


@pytest.mark.anyio
async def test_a_final_state_that_never_becomes_visible_is_read_again_a_bounded_number_of_times(
    deployment_id: uuid.UUID,
) -> None:
    """An event whose write is never seen (a transaction rolled back after its event was sent):
    the watcher reads the run again STALE_RECHECKS times, then waits for the next safety read
    as before, instead of reading it every STALE_RECHECK_S for as long as the call waits."""
    async with get_client() as client:
        watcher, _, wait, reads_after = await racing_watch(client, deployment_id, 1000)
        try:
            await until(lambda: reads_after[0] >= 1 + STALE_RECHECKS)
            await asyncio.sleep(10 * STALE_RECHECK_S)
            assert reads_after == [1 + STALE_RECHECKS]
            assert not wait.done()
        finally:
            wait.cancel()
            await watcher.close()


@pytest.mark.parametrize(
    ("state_at_s", "event_at_s", "stale"),
    [(0.0, 1.0, True), (1.0, 1.0, False), (2.0, 1.0, False), (0.0, None, False)],
)
def test_a_read_is_stale_when_its_state_is_older_than_the_final_states_event(
    state_at_s: float, event_at_s: float | None, stale: bool
) -> None:
    t0 = datetime(2026, 12, 6, tzinfo=timezone.utc)
    run = FlowRun(flow_id=uuid.uuid4(), state=Running(timestamp=t0 + timedelta(seconds=state_at_s)))
    event_at = None if event_at_s is None else t0 + timedelta(seconds=event_at_s)
    assert read_before_event(run, event_at) is stale
    assert read_before_event(FlowRun(flow_id=uuid.uuid4()), t0) is False  # no state read
