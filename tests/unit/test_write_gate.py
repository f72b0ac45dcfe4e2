"""The pod's write gate (`prefect_api.writegate`): which requests it holds, and in what order.

Pure logic: the kinds of Prefect's routes, and the gate's turns between creates and other writes
from an event loop and from threads. The gate against the real server, in a pod: see
tests/integration/test_write_gate_server.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from prefect_pipedeploy.prefect_api.writegate import (
    GatedAsyncTransport,
    Kind,
    WriteGate,
    request_kind,
)


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("POST", "/api/flow_runs/", Kind.CREATE),  # the plain create route
        ("POST", "/api/deployments/1b2c/create_flow_run", Kind.CREATE),
        ("POST", "/api/flow_runs/1b2c/set_state", Kind.WRITE),
        ("POST", "/api/logs/", Kind.WRITE),
        ("POST", "/api/artifacts/", Kind.WRITE),
        ("PATCH", "/api/flow_runs/1b2c", Kind.WRITE),
        ("DELETE", "/api/variables/name/x", Kind.WRITE),
        ("PUT", "/api/block_documents/1b2c", Kind.WRITE),
        ("GET", "/api/flow_runs/1b2c", None),
        ("POST", "/api/flow_runs/filter", None),  # reads through POST
        ("POST", "/api/flow_runs/count", None),
        ("POST", "/api/flow_runs/paginate", None),
        ("POST", "/api/flow_runs/history", None),
        ("POST", "/api/ui/flow_runs/count-task-runs", None),
        ("HEAD", "/api/health", None),
    ],
)
def test_request_kinds(method: str, path: str, kind: Kind | None) -> None:
    assert request_kind(method, path) is kind


@pytest.mark.anyio
async def test_a_create_waits_for_writes_in_flight_and_holds_back_new_ones() -> None:
    gate = WriteGate()
    order: list[str] = []
    await gate.enter(Kind.WRITE)  # a write in flight

    async def create() -> None:
        await gate.enter(Kind.CREATE)
        order.append("create")
        await asyncio.sleep(0.01)
        gate.release(Kind.CREATE)

    async def write(name: str) -> None:
        await gate.enter(Kind.WRITE)
        order.append(name)
        gate.release(Kind.WRITE)

    creating = asyncio.create_task(create())
    await asyncio.sleep(0.01)
    assert order == []  # the create waits for the write in flight
    later = asyncio.create_task(write("later write"))
    await asyncio.sleep(0.01)
    assert order == []  # a write asked for while a create waits: after the create
    gate.release(Kind.WRITE)
    await asyncio.gather(creating, later)
    assert order == ["create", "later write"]


@pytest.mark.anyio
async def test_writes_go_together_and_creates_one_at_a_time() -> None:
    gate = WriteGate()
    await asyncio.gather(*(gate.enter(Kind.WRITE) for _ in range(5)))  # none waited
    for _ in range(5):
        gate.release(Kind.WRITE)
    await gate.enter(Kind.CREATE)
    second = asyncio.create_task(gate.enter(Kind.CREATE))
    await asyncio.sleep(0.01)
    assert not second.done()
    gate.release(Kind.CREATE)
    await asyncio.wait_for(second, 1)
    gate.release(Kind.CREATE)


@pytest.mark.anyio
async def test_a_create_cancelled_while_waiting_lets_the_writes_it_held_back_go() -> None:
    gate = WriteGate()
    await gate.enter(Kind.WRITE)
    waiting = asyncio.create_task(gate.enter(Kind.CREATE))
    await asyncio.sleep(0.01)
    held = asyncio.create_task(gate.enter(Kind.WRITE))
    await asyncio.sleep(0.01)
    assert not held.done()
    waiting.cancel()
    await asyncio.wait_for(held, 1)  # the create gave up: the write goes
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.release(Kind.WRITE)
    gate.release(Kind.WRITE)
    await asyncio.wait_for(gate.enter(Kind.CREATE), 1)  # nothing left counted


@pytest.mark.anyio
async def test_a_threads_write_and_the_loops_create_take_turns() -> None:
    # a `def` pipeline's engine writes from its thread through the sync client
    gate = WriteGate()
    await gate.enter(Kind.CREATE)
    entered = threading.Event()

    def thread_write() -> None:
        gate.enter_sync(Kind.WRITE)
        entered.set()
        time.sleep(0.05)
        gate.release(Kind.WRITE)

    thread = threading.Thread(target=thread_write)
    thread.start()
    await asyncio.sleep(0.02)
    assert not entered.is_set()  # waits for the loop's create
    gate.release(Kind.CREATE)
    assert await asyncio.to_thread(entered.wait, 1)
    started = time.monotonic()
    await gate.enter(Kind.CREATE)  # waits for the thread's write to be answered
    assert time.monotonic() - started > 0.01
    gate.release(Kind.CREATE)
    thread.join(1)


class Answers(httpx.AsyncBaseTransport):
    """A transport answering each request with the next status (pure logic: no server)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(self.statuses.pop(0))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status", "on"),
    [
        ("POST", "/api/flow_runs/", 503, True),  # a refused create turns the gate on
        ("POST", "/api/flow_runs/", 201, False),
        ("POST", "/api/logs/", 503, False),  # only a create's refusal does
        ("POST", "/api/flow_runs/filter", 503, False),
    ],
)
async def test_the_gate_turns_on_at_a_refused_create(
    method: str, path: str, status: int, on: bool
) -> None:
    gate = WriteGate()
    transport = GatedAsyncTransport(Answers([status]), gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.request(method, path)
    assert gate.on is on
