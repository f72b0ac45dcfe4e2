"""The write gate on Prefect's real clients against the real server (`prefect_api.writegate`):
installed as a pod installs it, once on, no create is in flight at the server while another write
of the process is, and every request is answered as without the gate. The rule itself, with
tables: tests/unit/test_write_gate.py. A pod under load with it: the e2e direct-dispatch tests
and `benchmarks/latency.py`'s gateway section."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.states import Completed, Running

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy._compat import wrap_transports
from prefect_pipedeploy.prefect_api.runs import create_deployment_run
from prefect_pipedeploy.prefect_api.writegate import Kind, install_write_gate, request_kind
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

#: (kind, sent, answered, status) of each write that reached the server
Sent = list[tuple[Kind, float, float, int]]


class RecordingAsync(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, sent: Sent) -> None:
        self.inner, self.sent = inner, sent

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = await self.inner.handle_async_request(request)
        if (kind := request_kind(request.method, request.url.path)) is not None:
            self.sent.append((kind, started, time.monotonic(), response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class RecordingSync(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport, sent: Sent) -> None:
        self.inner, self.sent = inner, sent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = self.inner.handle_request(request)
        if (kind := request_kind(request.method, request.url.path)) is not None:
            self.sent.append((kind, started, time.monotonic(), response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


def log_line(flow_run_id: uuid.UUID, message: str) -> dict[str, Any]:
    return LogCreate(
        name="gate", level=20, message=message, timestamp=time.time(), flow_run_id=flow_run_id
    ).model_dump(mode="json")  # type: ignore[arg-type]


async def test_once_on_no_create_meets_another_write_of_the_process(sdk: PipeDeploy) -> None:
    created = await sdk.acreate_deployment(f"{PIPELINES}:score", f"gate-{uuid.uuid4().hex[:6]}")
    sent: Sent = []
    async with get_client() as client:
        with get_client(sync_client=True) as sync_client:
            wrap_transports(  # recorded below the gate: what the server sees, in order
                client,
                sync_client,
                lambda inner: RecordingAsync(inner, sent),
                lambda inner: RecordingSync(inner, sent),
            )
            gate = install_write_gate(client, sync_client)
            gate.turn_on()  # as after a refused create
            deployment = await client.read_deployment(uuid.UUID(created["id"]))

            async def create_and_finish() -> uuid.UUID:
                run = await create_deployment_run(
                    client, deployment, parameters={}, tags=["gate"], state=Running()
                )
                await client.create_logs([log_line(run.id, "from the loop")])
                # a `def` pipeline's engine: its thread, the sync client
                await asyncio.to_thread(
                    sync_client.create_logs, [log_line(run.id, "from a thread")]
                )
                await client.set_flow_run_state(run.id, Completed(), force=True)
                return run.id

            runs = await asyncio.gather(*(create_and_finish() for _ in range(8)))
            for run_id in runs:
                assert (await client.read_flow_run(run_id)).state_type.value == "COMPLETED"

    creates = [(s, e) for kind, s, e, _ in sent if kind is Kind.CREATE]
    writes = [(s, e) for kind, s, e, _ in sent if kind is Kind.WRITE]
    # a create the server refused (another test's write on the shared server) was tried again
    made = [status for kind, *_, status in sent if kind is Kind.CREATE and status < 300]
    assert len(made) == 8 and len(writes) == 24, sent
    assert all(status < 300 or (kind, status) == (Kind.CREATE, 503) for kind, *_, status in sent)
    for c_start, c_end in creates:
        for w_start, w_end in writes:  # intervals at the server do not overlap
            assert w_end <= c_start or w_start >= c_end, (c_start, c_end, w_start, w_end)


@pytest.mark.parametrize(("mode", "on"), [("auto", False), ("on", True), ("off", None)])
async def test_the_setting_chooses_the_gate(prefect_api: str, mode: str, on: bool | None) -> None:
    async with get_client() as client:
        with get_client(sync_client=True) as sync_client:
            before = client._client._transport
            gate = install_write_gate(client, sync_client, mode)
            if on is None:  # off: no gate, Prefect's transports as they were
                assert gate is None and client._client._transport is before
            else:
                assert gate is not None and gate.on is on
                assert client._client._transport is not before
