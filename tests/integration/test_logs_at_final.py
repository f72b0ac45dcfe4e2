"""A run's log lines are stored when it is final: the flow engine in this process against the
real Prefect server (no worker, no pod; `tests/e2e/test_logs_at_final.py` has those).

Each pipeline logs N numbered lines; a state hook (Prefect runs it right after the state is
set) reads the run's logs from the API at that moment. Before the fix, the lines left the
process in Prefect's 2 s batches: at the final state the API had none of a short run's lines
(the issue saw 2 of 16 through the SDK right after a 200), and they appeared about a second
later.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun, State
from prefect.client.schemas.sorting import LogSort

from prefect_pipedeploy._compat import install_api_log_sink
from prefect_pipedeploy.engine import runlogs
from prefect_pipedeploy.engine.flow_engine import run_pipeline_async, run_pipeline_sync

N = 12

#: flow run id -> (state name, the messages the API had when the hook ran)
AT_FINAL: dict[uuid.UUID, tuple[str, list[str]]] = {}
_LOCK = threading.Lock()


def stored_messages(flow_run_id: uuid.UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
    return [log.message for log in logs]


def record_at_final(flow: Any, flow_run: FlowRun, state: State[Any]) -> None:
    """A state hook: what the API holds for the run the moment its final state is set."""
    messages = stored_messages(flow_run.id)
    with _LOCK:
        AT_FINAL[flow_run.id] = (state.name or "", messages)


HOOKS: dict[str, Any] = {"on_completion": [record_at_final], "on_failure": [record_at_final]}


@flow(log_prints=True, **HOOKS)
def numbered(tag: str, fail: bool = False, pause_s: float = 0.0) -> dict[str, int]:
    for i in range(N):
        print(f"{tag} line {i:02d}")
        time.sleep(pause_s)
    if fail:
        raise ValueError(f"{tag} fails on purpose")
    return {"lines": N}


@flow(log_prints=True, **HOOKS)
async def numbered_async(tag: str, fail: bool = False, pause_s: float = 0.0) -> dict[str, int]:
    for i in range(N):
        print(f"{tag} line {i:02d}")
        await asyncio.sleep(pause_s)
    if fail:
        raise ValueError(f"{tag} fails on purpose")
    return {"lines": N}


# Concurrent runs in one process log through their run loggers: Prefect's `log_prints` swaps
# `builtins.print` per run, which races between runs (a pod installs its print once instead).
@flow(**HOOKS)
def numbered_logged(tag: str, pause_s: float = 0.01) -> dict[str, int]:
    for i in range(N):
        get_run_logger().info(f"{tag} line {i:02d}")
        time.sleep(pause_s)
    return {"lines": N}


@flow(**HOOKS)
async def numbered_logged_async(tag: str, pause_s: float = 0.01) -> dict[str, int]:
    for i in range(N):
        get_run_logger().info(f"{tag} line {i:02d}")
        await asyncio.sleep(pause_s)
    return {"lines": N}


@pytest.fixture(scope="module", autouse=True)
def this_process_stores_logs_before_final(prefect_api: str) -> Iterator[None]:
    """`RunLogs` installed in this process as in an execution process; removed afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runlogs, "_process_run_logs", None)
        patch.setattr(runlogs, "_decided", False)
        run_logs = runlogs.process_run_logs()
        try:
            yield
        finally:
            if run_logs is not None:
                run_logs.flush_everything()
            install_api_log_sink(None)


def new_run(pipeline: Any, **parameters: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.create_flow_run(pipeline, parameters=parameters)


def numbered_lines(tag: str) -> list[str]:
    return [f"{tag} line {i:02d}" for i in range(N)]


def at_final(flow_run: FlowRun) -> tuple[str, list[str]]:
    assert flow_run.id in AT_FINAL, "the state hook did not run"
    return AT_FINAL[flow_run.id]


def assert_every_line_stored_at_final(flow_run: FlowRun, tag: str, state: str) -> list[str]:
    name, messages = at_final(flow_run)
    assert name == state
    numbered_messages = [m for m in messages if m.startswith(f"{tag} line ")]
    assert numbered_messages == numbered_lines(tag), (
        f"at {state}, the API had {len(numbered_messages)} of the run's {N} lines: {messages}"
    )
    assert any(m.startswith("Beginning flow run") for m in messages), messages
    return messages


@pytest.mark.parametrize("fail", [False, True], ids=["completed", "failed"])
def test_a_def_run_has_every_line_stored_when_it_is_final(fail: bool) -> None:
    tag = f"def-{uuid.uuid4().hex[:6]}"
    flow_run = new_run(numbered, tag=tag, fail=fail)
    state = run_pipeline_sync(numbered, flow_run)
    messages = assert_every_line_stored_at_final(flow_run, tag, "Failed" if fail else "Completed")
    assert state.is_failed() is fail
    if fail:  # the engine's traceback line, logged before it proposes Failed
        assert any("fails on purpose" in m for m in messages), messages


@pytest.mark.parametrize("fail", [False, True], ids=["completed", "failed"])
def test_an_async_run_has_every_line_stored_when_it_is_final(fail: bool) -> None:
    tag = f"async-{uuid.uuid4().hex[:6]}"
    flow_run = new_run(numbered_async, tag=tag, fail=fail)
    state = asyncio.run(run_pipeline_async(numbered_async, flow_run))
    messages = assert_every_line_stored_at_final(flow_run, tag, "Failed" if fail else "Completed")
    assert state.is_failed() is fail
    if fail:
        assert any("fails on purpose" in m for m in messages), messages


def test_a_run_in_a_pod_engine_has_every_line_stored_when_it_is_final() -> None:
    # the pod's engines (no per-run suspension observer) call back before the final state too
    tag = f"pod-{uuid.uuid4().hex[:6]}"
    flow_run = new_run(numbered, tag=tag)
    run_pipeline_sync(numbered, flow_run, shared_observer=True)
    assert_every_line_stored_at_final(flow_run, tag, "Completed")
    tag = f"pod-async-{uuid.uuid4().hex[:6]}"
    flow_run = new_run(numbered_async, tag=tag)
    asyncio.run(run_pipeline_async(numbered_async, flow_run, shared_observer=True))
    assert_every_line_stored_at_final(flow_run, tag, "Completed")


def test_parallel_runs_in_one_process_each_have_their_own_lines_at_final() -> None:
    tags = [f"par{k}-{uuid.uuid4().hex[:4]}" for k in range(6)]
    runs = [
        new_run(numbered_logged if k % 2 else numbered_logged_async, tag=tag)
        for k, tag in enumerate(tags)
    ]

    async def all_at_once() -> None:
        await asyncio.gather(
            *(
                asyncio.to_thread(run_pipeline_sync, numbered_logged, run, shared_observer=True)
                if k % 2
                else run_pipeline_async(numbered_logged_async, run, shared_observer=True)
                for k, run in enumerate(runs)
            )
        )

    asyncio.run(all_at_once())
    for run, tag in zip(runs, tags, strict=True):
        name, messages = at_final(run)
        assert name == "Completed"
        assert [m for m in messages if " line " in m] == numbered_lines(tag), messages
        assert not any(other in m for m in messages for other in tags if other != tag)


class CountingClient:
    """A real Prefect client whose `create_logs` POSTs are counted (the server is real)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.posts: list[int] = []

    async def create_logs(self, logs: list[dict[str, Any]]) -> None:
        self.posts.append(len(logs))
        await self.client.create_logs(logs)


def log_line(flow_run_id: uuid.UUID, message: str) -> dict[str, Any]:
    from prefect.client.schemas.actions import LogCreate

    line = LogCreate(
        name="test",
        level=20,
        message=message,
        timestamp=time.time(),  # type: ignore[arg-type]
        flow_run_id=flow_run_id,
    ).model_dump(mode="json")
    return {**line, "__payload_size__": len(message) + 100}


@pytest.mark.parametrize("cancel_first", [False, True], ids=["all-wait", "first-cancelled"])
def test_concurrent_flushes_go_together_and_each_returns_with_its_lines_stored(
    cancel_first: bool,
) -> None:
    # 12 runs end at once in one process (a parallel pod): their flushes take two POSTs, the
    # first asker's and one for the 11 that asked while it was on its way; each flush returns
    # with its run's lines stored. A first asker cancelled mid-POST (its run's timeout) does
    # not cancel the POST that carries the others' lines.
    run_logs = runlogs.RunLogs()
    runs = [new_run(numbered, tag=f"group-{k}") for k in range(12)]
    for run in runs:
        for i in range(3):
            run_logs.sink(log_line(run.id, f"{run.id} group line {i}"))

    async def flush_all() -> list[int]:
        async with get_client() as client:
            counting = CountingClient(client)

            async def flush(run: FlowRun) -> list[str]:
                await run_logs.aflush(counting, run.id)  # type: ignore[arg-type]
                return stored_messages(run.id)

            first = asyncio.create_task(flush(runs[0]))
            await asyncio.sleep(0)  # the first asker's POST is on its way
            rest = [asyncio.create_task(flush(run)) for run in runs[1:]]
            if cancel_first:
                first.cancel()
            stored = await asyncio.gather(*rest)
            for run, messages in zip(runs[1:], stored, strict=True):
                assert messages == [f"{run.id} group line {i}" for i in range(3)]
            if not cancel_first:
                assert await first == [f"{runs[0].id} group line {i}" for i in range(3)]
            else:
                with pytest.raises(asyncio.CancelledError):
                    await first
            return counting.posts

    posts = asyncio.run(flush_all())
    assert posts == [3, 33], posts  # lines per POST: the first run's, then the 11 others'
    assert stored_messages(runs[0].id) == [f"{runs[0].id} group line {i}" for i in range(3)]
    assert run_logs._asked == {} and run_logs._posting is None  # nothing left waiting
