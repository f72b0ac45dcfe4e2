"""The gateway's own queue of calls waiting to create an execution, through the whole gateway:
the real `Gateway` driven in-process (httpx's ASGI transport, or the ASGI interface itself for a
caller that disconnects), its Prefect client behind the test proxy, which holds the gateway's
count of waiting executions to stand for a slow server. Executions are counted on the server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

from benchmarks.apiproxy import CountingProxy
from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.gateway import create_app
from prefect_pipedeploy.gateway.service import Gateway
from prefect_pipedeploy.stack import free_port
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

DEMO = PIPELINES

HELD_S = 2.0  # how long the proxy holds each count of waiting executions while `slow` is set


@pytest.fixture(scope="module")
def endpoint(pool: str) -> dict[str, str]:
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{DEMO}:greet",
        f"queue-{uuid.uuid4().hex[:6]}",
        ram_request="256MiB",
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string")
        ],
        max_retries=0,
    )
    return {
        "path": f"/endpoints/{created['endpoint_url_path']}",
        "token": created["endpoint_token"],
        "pool": pool,
        "id": created["id"],
    }


@pytest.fixture(scope="module")
def proxy(prefect_api: str) -> Iterator[tuple[CountingProxy, threading.Event]]:
    slow = threading.Event()
    counting = CountingProxy(
        prefect_api.removesuffix("/api"),
        port=free_port(),
        delay=lambda method, path: (
            HELD_S if slow.is_set() and (method, path) == ("POST", "/flow_runs/count") else 0.0
        ),
    )
    counting.start()
    yield counting, slow
    counting.stop()


@pytest.fixture
def slow_server(
    proxy: tuple[CountingProxy, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The proxy's API URL, holding counts; a queue of 2 places."""
    counting, slow = proxy
    monkeypatch.setenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_QUEUED", "2")
    slow.set()
    yield counting.url("gateway")
    slow.clear()


@contextlib.asynccontextmanager
async def served(pool: str, api_url: str) -> AsyncIterator[tuple[Gateway, Any]]:
    async with PrefectClient(api_url) as prefect:
        gateway = Gateway([pool], prefect)
        try:
            yield gateway, create_app([pool], gateway=gateway)
        finally:
            await gateway.close()


async def executions(endpoint: dict[str, str]) -> list[str]:
    async with get_client() as prefect:
        runs = await prefect.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[endpoint["id"]]))
        )
    return sorted(str((run.parameters or {}).get("name")) for run in runs)


async def post(app: Any, endpoint: dict[str, str], name: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.post(
            endpoint["path"],
            params={"wait_for_completion": "false"},
            json={"name": name},
            headers={"Authorization": f"EndpointToken {endpoint['token']}"},
        )


class Caller:
    """A caller at the ASGI interface that can hang up: its body first, then nothing until
    `leave()`, then `http.disconnect` (what uvicorn gives once the connection is closed)."""

    def __init__(self, endpoint: dict[str, str], name: str) -> None:
        self.endpoint = endpoint
        self.body = json.dumps({"name": name}).encode()
        self.left = asyncio.Event()
        self.sent_body = False
        self.answers: list[dict[str, Any]] = []

    def leave(self) -> None:
        self.left.set()

    async def receive(self) -> dict[str, Any]:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if not self.left.is_set():
            await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.answers.append(message)

    async def call(self, app: Any) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": self.endpoint["path"],
            "raw_path": self.endpoint["path"].encode(),
            "root_path": "",
            "query_string": b"wait_for_completion=false",
            "headers": [
                (b"host", b"gateway"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.body)).encode()),
                (b"authorization", f"EndpointToken {self.endpoint['token']}".encode()),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("gateway", 80),
        }
        await app(scope, self.receive, self.send)


async def test_a_full_queue_answers_429_with_retry_after(
    endpoint: dict[str, str], slow_server: str
) -> None:
    """Before: every call waited its turn (30 calls: all 202, p50 31 s); none was refused."""
    async with served(endpoint["pool"], slow_server) as (_, app):
        answers = await asyncio.gather(*(post(app, endpoint, f"full-{i}") for i in range(5)))
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [202, 202, 429, 429, 429], [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["Retry-After"]) >= 1
            message = answer.json()["message"]
            assert "2 calls wait to create an execution" in message
            assert "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_MAX_QUEUED" in message
    accepted = sorted(
        json.loads(a.request.content)["name"] for a in answers if a.status_code == 202
    )
    assert await executions_named(endpoint, "full-") == accepted


async def executions_named(endpoint: dict[str, str], prefix: str) -> list[str]:
    return [name for name in await executions(endpoint) if name.startswith(prefix)]


async def test_a_caller_gone_before_the_create_gets_no_execution(
    endpoint: dict[str, str], slow_server: str
) -> None:
    """Before: the execution was created and run for a caller that had timed out (12 calls
    with a 3 s client timeout: 12 executions, 9 of them made after their caller had left)."""
    caller = Caller(endpoint, "gone-early")
    async with served(endpoint["pool"], slow_server) as (_, app):
        call = asyncio.create_task(caller.call(app))
        await asyncio.sleep(HELD_S / 2)  # the gateway is counting waiting executions
        caller.leave()
        await asyncio.wait_for(call, timeout=30)
    assert await executions_named(endpoint, "gone-") == []
    start = next(m for m in caller.answers if m["type"] == "http.response.start")
    assert start["status"] == 499


async def test_a_caller_who_leaves_while_queued_gives_up_its_place(
    endpoint: dict[str, str], slow_server: str
) -> None:
    """A queue of 2: one call creating, one waiting; the waiting caller leaves, and a third call
    takes its place instead of a 429. Before: no queue; the leaver got an execution."""
    leaver = Caller(endpoint, "left-queued")
    async with served(endpoint["pool"], slow_server) as (gateway, app):
        first = asyncio.create_task(post(app, endpoint, "stay-first"))
        await asyncio.sleep(0.3)
        waiting = asyncio.create_task(leaver.call(app))
        await asyncio.sleep(0.3)
        assert gateway.queue.queued == 2
        leaver.leave()
        await asyncio.wait_for(waiting, timeout=10)
        assert gateway.queue.queued == 1
        third = await post(app, endpoint, "stay-third")
        assert (await first).status_code == 202
    assert third.status_code == 202, third.text
    assert await executions_named(endpoint, "left-") == []
    assert await executions_named(endpoint, "stay-") == ["stay-first", "stay-third"]
