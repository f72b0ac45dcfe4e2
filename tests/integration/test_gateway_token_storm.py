"""Concurrent wrong tokens through the whole gateway: the real `Gateway` driven in-process
(httpx's ASGI transport, one client address per transport), its Prefect client behind the test
proxy, which counts the gateway's re-reads of a deployment. No worker serves the pool: calls use
?wait_for_completion=false and their executions stay Scheduled."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import PrefectClient

from benchmarks.apiproxy import CountingProxy
from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.gateway import create_app
from prefect_pipedeploy.gateway.service import Gateway
from prefect_pipedeploy.stack import free_port
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio

LIMIT = 5


@pytest.fixture
def endpoint(pool: str) -> dict[str, str]:
    name = f"storm-{uuid.uuid4().hex[:6]}"
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{PIPELINES}:greet",
        name,
        ram_request="256MiB",
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string")
        ],
        max_retries=0,
    )
    return {
        "name": name,
        "path": f"/endpoints/{created['endpoint_url_path']}",
        "token": created["endpoint_token"],
        "pool": pool,
    }


@pytest.fixture(scope="module")
def proxy(prefect_api: str) -> Iterator[CountingProxy]:
    counting = CountingProxy(prefect_api.removesuffix("/api"), port=free_port())
    counting.start()
    yield counting
    counting.stop()


@contextlib.asynccontextmanager
async def served(pool: str, api_url: str) -> AsyncIterator[Any]:
    async with PrefectClient(api_url) as prefect:
        gateway = Gateway([pool], prefect)
        try:
            yield create_app([pool], gateway=gateway)
        finally:
            await gateway.close()


async def post(app: Any, endpoint: dict[str, str], token: str, client: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(client, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.post(
            endpoint["path"],
            params={"wait_for_completion": "false"},
            json={"name": "x"},
            headers={"Authorization": f"EndpointToken {token}"},
        )


def rereads(proxy: CountingProxy, since: int) -> int:
    return sum(
        (call.method, call.endpoint) == ("GET", "/deployments/{id}")
        for call in proxy.snapshot()[since:]
    )


async def test_concurrent_wrong_tokens_meet_the_limit_and_refused_ones_cost_no_read(
    endpoint: dict[str, str], proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a wrong token was counted only after the gateway had re-read the deployment, so
    30 concurrent wrong tokens from one client were all answered 401 (the limit of 5 never
    met) and each cost the Prefect API a read."""
    monkeypatch.setenv("PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_BAD_TOKEN_LIMIT", str(LIMIT))
    async with served(endpoint["pool"], proxy.url("gateway")) as app:
        assert (await post(app, endpoint, endpoint["token"], "10.0.0.1")).status_code == 202
        since = len(proxy.snapshot())
        answers = await asyncio.gather(
            *(post(app, endpoint, f"pdt_wrong{i}", "10.0.0.2") for i in range(30))
        )
        counts = Counter(answer.status_code for answer in answers)
        assert counts == {401: LIMIT, 429: 30 - LIMIT}, counts
        assert all(a.headers["retry-after"] for a in answers if a.status_code == 429)
        assert rereads(proxy, since) <= LIMIT
        # the right token from another client still opens it
        assert (await post(app, endpoint, endpoint["token"], "10.0.0.3")).status_code == 202


async def test_a_token_rotated_during_a_storm_works_at_once(
    endpoint: dict[str, str], proxy: CountingProxy
) -> None:
    """The re-reads a storm shares never serve a request one that started before it arrived:
    a token rotated while wrong tokens keep coming opens the endpoint on its first call."""
    sdk = PipeDeploy(work_pool_name=endpoint["pool"])
    async with served(endpoint["pool"], proxy.url("gateway")) as app:
        assert (await post(app, endpoint, endpoint["token"], "10.0.1.1")).status_code == 202
        stop = asyncio.Event()

        async def storm() -> list[int]:
            statuses = []
            for i in range(10_000):  # distinct clients: none is blocked
                if stop.is_set():
                    break
                statuses.append(
                    (
                        await post(app, endpoint, "pdt_wrong", f"10.1.{i // 250}.{i % 250}")
                    ).status_code
                )
            return statuses

        storming = [asyncio.create_task(storm()) for _ in range(4)]
        await asyncio.sleep(0.5)
        rotated = (await sdk.agenerate_new_endpoint_token(endpoint["name"]))["endpoint_token"]
        first = await post(app, endpoint, rotated, "10.0.1.2")
        stop.set()
        statuses = [s for task in storming for s in await task]
        assert first.status_code == 202, first.text
        assert set(statuses) == {401}, Counter(statuses)
