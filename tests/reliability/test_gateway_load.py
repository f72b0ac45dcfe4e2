"""The gateway under load: a burst of 500 concurrent calls, and storms of wrong tokens.

A real `pipedeploy gateway` process (uvicorn on 127.0.0.1, its default limits: a queue of 10
calls waiting to create an execution, 20 wrong tokens a minute per client) serving the module's
pool, whose Prefect API calls go through the counting proxy (benchmarks/apiproxy.py); a real
worker runs the executions in a warm parallel pod. The callers are httpx clients in this process,
each call with a client timeout. Many clients are told apart by X-Forwarded-For, which the
gateway honours from 127.0.0.1 (uvicorn's trusted proxy address). Each test ends with the pool's
ledger (tests/support/ledger.py).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.sorting import FlowRunSort
from prefect.utilities.asyncutils import run_coro_as_sync

from benchmarks.apiproxy import CountingProxy
from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.stack import ChildProcess, free_port, start_child, wait_for_http
from tests.support.executions import unique, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.paths import PIPELINES
from tests.support.processes import peaks_during, start_worker

BURST = 500
CALL_TIMEOUT_S = 90.0  # the gateway answers a waiting call within its 25 s wait budget (303)
RSS_GROWTH_BOUND = 150 * 1024 * 1024  # generous: 500 concurrent requests, measured about 20 MiB
BAD_TOKEN_LIMIT = 20  # the gateway's default (GATEWAY_BAD_TOKEN_LIMIT)
MiB = 1024 * 1024


@dataclass
class Answer:
    """One call as its caller saw it."""

    index: int
    status: int | None  # None: no answer (the error says why)
    headers: httpx.Headers
    body: Any
    seconds: float
    error: str = ""


@pytest.fixture(scope="module")
def proxy(prefect_api: str) -> Iterator[CountingProxy]:
    counting = CountingProxy(prefect_api.removesuffix("/api"), port=free_port())
    counting.start()
    yield counting
    counting.stop()


def _start_gateway(name: str, pool: str, logs: Path, api_url: str) -> tuple[ChildProcess, str]:
    port = free_port()
    child = start_child(
        f"gateway-{name}",
        [sys.executable, "-m", "prefect_pipedeploy.cli", "gateway"]
        + ["--pool", pool, "--port", str(port)],
        logs / f"gateway-{name}.log",
        env={**os.environ, "PREFECT_API_URL": api_url},
    )
    return child, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(
    pool: str, prefect_api: str, proxy: CountingProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Two gateways on the module's pool, one talking to Prefect directly (the burst: the
    counting proxy runs in this process, which is busy with 500 calls then), one through the
    proxy (its calls counted as role "gateway"); and a worker."""
    logs = tmp_path_factory.mktemp("gateway-load-logs")
    children: list[ChildProcess] = []
    try:
        direct, direct_url = _start_gateway("direct", pool, logs, prefect_api)
        children.append(direct)
        counted, counted_url = _start_gateway("counted", pool, logs, proxy.url("gateway"))
        children.append(counted)
        children.append(start_worker(pool, logs))
        wait_for_http(f"{direct_url}/health", 60, direct)
        wait_for_http(f"{counted_url}/health", 60, counted)
        yield {"url": direct_url, "gateway": direct, "counted_url": counted_url, "pool": pool}
    finally:
        for child in reversed(children):
            child.stop()


def deploy_greeter(pool: str) -> dict[str, str]:
    """`greet` in a warm pod running up to 4 executions at once; its path, token and id."""
    sdk = PipeDeploy(work_pool_name=pool)
    name = unique("greet-load")
    created = sdk.create_deployment(
        f"{PIPELINES}:greet",
        name,
        mode="low_latency",
        enable_parallel_executions=True,
        max_parallel_executions_per_pod=4,
        ram_request="256MiB",
        max_retries=0,
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string")
        ],
    )
    wait_until_up(sdk, name)
    return {
        "path": f"/endpoints/{created['endpoint_url_path']}",
        "token": created["endpoint_token"],
        "id": created["id"],
    }


def runs_of(deployment_id: str) -> dict[str, str]:
    """The executions of a deployment: id -> the `name` input it was called with."""

    async def read() -> dict[str, str]:
        found: dict[str, str] = {}
        async with get_client() as client:
            while True:
                page = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    sort=FlowRunSort.ID_DESC,
                    limit=200,
                    offset=len(found),
                )
                found.update({str(r.id): str((r.parameters or {}).get("name")) for r in page})
                if len(page) < 200:
                    return found

    return run_coro_as_sync(read())


def rss(process: ChildProcess) -> int:
    return int(psutil.Process(process.popen.pid).memory_info().rss)


async def _call(
    http: httpx.AsyncClient,
    index: int,
    path: str,
    *,
    token: str,
    client: str,
    wait: bool,
    body: dict[str, Any],
) -> Answer:
    started = time.monotonic()
    try:
        response = await http.post(
            path,
            params={} if wait else {"wait_for_completion": "false"},
            headers={"Authorization": f"EndpointToken {token}", "X-Forwarded-For": client},
            json=body,
        )
    except httpx.HTTPError as exc:
        return Answer(index, None, httpx.Headers(), None, time.monotonic() - started, repr(exc))
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = response.text
    return Answer(index, response.status_code, response.headers, parsed, time.monotonic() - started)


def _client(base: str, connections: int) -> httpx.AsyncClient:
    """A client whose every call has its own connection: a call never reuses one the gateway
    is closing after its keep-alive timeout (5 s), a race of the client's, not the gateway's."""
    return httpx.AsyncClient(
        base_url=base,
        timeout=CALL_TIMEOUT_S,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=0),
    )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def test_a_burst_of_500_concurrent_calls_is_answered_and_loses_nothing(
    stack: dict[str, Any],
) -> None:
    """Fault: 500 concurrent calls, waiting and not waiting mixed, each from its own client.

    Before the gateway had its own queue (issue 12): 30 concurrent calls were all answered 202
    after a p50 of 31 s and never 429, and runs were made for callers who had gone. Now every
    call is answered at once or after its execution: 200 with its own outputs, 202 or 303 with
    its execution, or 429 with Retry-After; no 5xx, no connection left hanging; the gateway's
    memory stays bounded; every execution it accepted ends final, and it made no other."""
    endpoint = deploy_greeter(stack["pool"])
    gateway: ChildProcess = stack["gateway"]

    async def burst() -> list[Answer]:
        async with _client(stack["url"], BURST) as http:
            # warm: the endpoint table is loaded and one execution has run
            warm = await _call(
                http, -1, endpoint["path"], token=endpoint["token"], client="10.1.0.1",
                wait=True, body={"name": "warm"},
            )  # fmt: skip
            assert warm.status == 200, warm
            return list(
                await asyncio.gather(
                    *(
                        _call(
                            http,
                            i,
                            endpoint["path"],
                            token=endpoint["token"],
                            client=f"10.2.{i // 250}.{i % 250}",
                            wait=i % 2 == 0,
                            body={"name": f"burst-{i}"},
                        )
                        for i in range(BURST)
                    )
                )
            )

    before = rss(gateway)
    answers, peak = peaks_during({"rss": lambda: rss(gateway)}, lambda: asyncio.run(burst()))
    after = rss(gateway)

    statuses = Counter(a.status for a in answers)
    refused = [a.seconds for a in answers if a.status == 429]
    taken = [a.seconds for a in answers if a.status != 429]
    print(
        f"\n{BURST} concurrent calls: {dict(statuses)}; 429 answered in p50 "
        f"{_quantile(refused, 0.5):.2f} s, max {max(refused, default=0):.2f} s; the others in "
        f"p50 {_quantile(taken, 0.5):.2f} s, max {max(taken, default=0):.2f} s; gateway RSS "
        f"{before / MiB:.0f} MiB before, peak {peak['rss'] / MiB:.0f} MiB, "
        f"{after / MiB:.0f} MiB after"
    )
    hung = [a for a in answers if a.status is None]
    assert not hung, hung[:5]
    assert set(statuses) <= {200, 202, 303, 429}, [
        (a.status, a.body) for a in answers if a.status not in (200, 202, 303, 429)
    ][:5]
    assert statuses[429] > 0, "the burst never met the gateway's queue limit"
    for answer in answers:
        if answer.status == 429:
            assert int(answer.headers["retry-after"]) >= 1, answer
            assert "try again" in answer.body["message"], answer
        elif answer.status == 200:  # each caller gets its own execution's outputs
            assert answer.body["outputs"]["greeting"] == f"hello burst-{answer.index}", answer
        elif answer.status in (202, 303):
            assert answer.headers["location"].endswith(answer.body["execution_id"]), answer
    assert peak["rss"] - before < RSS_GROWTH_BOUND, (before, peak)

    accepted = {a.body["execution_id"]: f"burst-{a.index}" for a in answers if a.status != 429}
    assert len(accepted) == BURST - statuses[429]  # one execution per accepted call
    check_ledger(stack["pool"], max_attempts=1, settle_s=120)
    created = {run_id: name for run_id, name in runs_of(endpoint["id"]).items() if name != "warm"}
    assert created == accepted  # none made for a refused call, none lost


def deploy_plain_greeter(pool: str) -> dict[str, str]:
    """An elastic `greet` deployment (its calls here never wait)."""
    created = PipeDeploy(work_pool_name=pool).create_deployment(
        f"{PIPELINES}:greet",
        unique("greet-storm"),
        ram_request="128MiB",
        max_retries=0,
        inputs_mapping=[
            InputSource(pipeline_input_name="name", endpoint_input_name="name", data_type="string")
        ],
    )
    return {
        "path": f"/endpoints/{created['endpoint_url_path']}",
        "token": created["endpoint_token"],
        "id": created["id"],
    }


def wrong_tokens(right: str, other: str, count: int) -> list[str]:
    """Tokens that must not open the endpoint: near misses of its token, another endpoint's
    token, random ones."""
    near = [
        right[:-1],
        right + "x",
        right[:-1] + ("A" if right[-1] != "A" else "B"),
        right.upper(),
        right[4:],
        other,
        "pdt_",
        "x" * 4096,
    ]
    return [near[i] if i < len(near) else f"pdt_{uuid.uuid4().hex}" for i in range(count)]


def test_wrong_token_storms_are_refused_per_client_and_the_right_token_still_works(
    stack: dict[str, Any], proxy: CountingProxy
) -> None:
    """Fault: 20 clients each send 30 wrong tokens at once (600 concurrent calls) while another
    client calls with the right token.

    Before (found by this test): a wrong token was counted only after the gateway had re-read
    the deployment, so concurrent wrong tokens never met the limit: all 600 were answered 401,
    none 429, and each cost the Prefect API a read (621 API calls). Now no wrong token opens the
    endpoint (nor another endpoint's token, as held before), each storming client is answered
    401 up to its limit and 429 with Retry-After after it, a refused call costs no API call, and
    the right token from another client works throughout."""
    endpoint = deploy_plain_greeter(stack["pool"])
    other = deploy_plain_greeter(stack["pool"])
    clients = [f"10.3.0.{i}" for i in range(20)]
    per_client = 30

    async def storm() -> tuple[dict[str, list[Answer]], list[Answer], list[Answer]]:
        async with _client(stack["counted_url"], 700) as http:

            async def bad(client: str) -> list[Answer]:
                tokens = wrong_tokens(endpoint["token"], other["token"], per_client)
                return list(
                    await asyncio.gather(
                        *(
                            _call(
                                http,
                                i,
                                endpoint["path"],
                                token=token,
                                client=client,
                                wait=False,
                                body={"name": "intruder"},
                            )  # fmt: skip
                            for i, token in enumerate(tokens)
                        )
                    )
                )

            async def good() -> list[Answer]:
                answers = []
                for i in range(5):
                    answers.append(
                        await _call(
                            http,
                            i,
                            endpoint["path"],
                            token=endpoint["token"],
                            client="10.4.0.1",
                            wait=False,
                            body={"name": f"owner-{i}"},
                        )  # fmt: skip
                    )
                    await asyncio.sleep(0.2)
                return answers

            results = await asyncio.gather(good(), *(bad(client) for client in clients))
            # a storming client is refused even with the right token until its minute is over
            blocked = [
                await _call(
                    http,
                    0,
                    endpoint["path"],
                    token=endpoint["token"],
                    client=client,
                    wait=False,
                    body={"name": "blocked"},
                )  # fmt: skip
                for client in clients[:3]
            ]
            return dict(zip(clients, results[1:], strict=True)), results[0], blocked

    calls_before = len(proxy.snapshot())
    by_client, owner, blocked = asyncio.run(storm())
    api_calls = proxy.snapshot()[calls_before:]
    rereads = [c for c in api_calls if (c.method, c.endpoint) == ("GET", "/deployments/{id}")]

    every = [a for answers in by_client.values() for a in answers]
    print(
        f"\n{len(every)} wrong-token calls from {len(clients)} clients: "
        f"{dict(Counter(a.status for a in every))}; the gateway made {len(api_calls)} Prefect API "
        f"calls meanwhile, {len(rereads)} of them re-reads of the deployment; the owner's calls: "
        f"{[a.status for a in owner]}"
    )
    assert not [a for a in every if a.status is None or a.status < 400], "a wrong token got in"
    for client, answers in by_client.items():
        counts = Counter(a.status for a in answers)
        assert counts == {401: BAD_TOKEN_LIMIT, 429: per_client - BAD_TOKEN_LIMIT}, (
            client,
            counts,
        )
        for answer in answers:
            if answer.status == 429:
                assert 1 <= int(answer.headers["retry-after"]) <= 60, answer
            else:
                assert "token is wrong" in answer.body["message"], answer
    # a refused (429) call costs the Prefect API nothing; a 401 at most one shared re-read;
    # each execution created reads its deployment once (the run is made from it as it is)
    assert len(rereads) <= len(clients) * BAD_TOKEN_LIMIT + len(owner), len(rereads)
    assert [a.status for a in owner] == [202] * len(owner), [a.body for a in owner]
    assert [a.status for a in blocked] == [429] * len(blocked), [a.body for a in blocked]
    assert not runs_of(other["id"])
    assert sorted(runs_of(endpoint["id"]).values()) == [f"owner-{i}" for i in range(len(owner))]
    check_ledger(stack["pool"], max_attempts=1, settle_s=120)
