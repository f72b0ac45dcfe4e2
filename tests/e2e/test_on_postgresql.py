"""The end-to-end core once more with the Prefect server on PostgreSQL (Debian's postgresql):
an elastic execution, a low-latency queue (FIFO), a low-latency parallel pod, a gateway call.
`pipedeploy up --database postgresql`: test_up_on_postgresql.py.

The module starts its own throwaway PostgreSQL cluster and its own Prefect server on it
(`stack.start_prefect_server_on`, as `pipedeploy up --database postgresql` and the benchmarks
do) and sets the session's SQLite server aside for the module: its `prefect_api` fixture
overrides the session's, so the shared `pool`, `sdk`, `worker` and `data_store` fixtures use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.postgresql import PostgreSQL
from prefect_pipedeploy.stack import (
    ChildProcess,
    Database,
    running,
    start_prefect_server_on,
    wait_for_http,
)
from tests.support.executions import deploy, eventual_log_messages, run_many, unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.postgresql import connections_of, fetch_value, flow_runs_in
from tests.support.processes import api_switched, start_gateway
from tests.support.server_reads import (
    LIMITED_ANSWERS,
    a_limited_deployments_runs,
    a_run_through_the_server,
    both_answers,
    check_the_run_and_its_event,
)


@pytest.fixture(scope="module")
def server_on_postgresql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """This module's Prefect server on a throwaway PostgreSQL cluster: its API URL and the
    cluster's URL. Both stop, and the cluster's directory goes, when the module ends."""
    home = tmp_path_factory.mktemp("server-on-postgresql")
    started, api_url = start_prefect_server_on(Database.postgresql, home, ui=False, timeout_s=300)
    cluster = next(child for child in started if isinstance(child, PostgreSQL))
    with running(started):
        yield api_url, cluster.url
    assert not cluster.alive() and not cluster.data_dir.exists()


@pytest.fixture(scope="module")
def prefect_api(server_on_postgresql: tuple[str, str]) -> Iterator[str]:
    """The module's server as PREFECT_API_URL for this process (environment and Prefect's
    settings) and its children while the module runs; the session's comes back after."""
    with api_switched(server_on_postgresql[0]) as api_url:
        yield api_url


def test_an_elastic_endpoint_deployment_executes(
    sdk: PipeDeploy, worker: ChildProcess, server_on_postgresql: tuple[str, str]
) -> None:
    """Its execution is a row of the PostgreSQL database."""
    name = deploy(sdk, "counter")
    execution = sdk.run_deployment(name, {"marker": "on-postgresql"}, timeout_s=90)
    assert execution["status"] == "Succeeded", execution
    assert execution["outputs"]["count"] == 1
    assert execution["outputs"]["pid"] != worker.popen.pid  # a process of its own
    assert "marker=on-postgresql" in eventual_log_messages(sdk, execution["execution_id"])
    assert flow_runs_in(server_on_postgresql[1], execution["execution_id"]) == 1


def test_a_low_latency_queue_runs_one_at_a_time_in_order(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = deploy(sdk, "queue_step", mode="low_latency", max_retries=0)
    wait_until_up(sdk, name)
    labels = ["A", "B", "C", "D"]
    results = run_many(
        sdk, name, [{"label": label, "sleep_s": 0.5} for label in labels], 3, spacing_s=0.01
    )
    assert [r["status"] for r in results] == ["Succeeded"] * 4
    by_start = sorted(results, key=lambda r: r["start_time"])
    assert [r["parameters"]["label"] for r in by_start] == labels
    for before, after in zip(by_start, by_start[1:], strict=False):
        assert after["start_time"] >= before["end_time"]  # one at a time


def test_a_low_latency_parallel_pod_runs_them_together(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = deploy(sdk, "async_sleeper", mode="low_latency", enable_parallel_executions=True)
    wait_until_up(sdk, name)
    results = run_many(sdk, name, [{"marker": f"p{i}", "sleep_s": 4} for i in range(4)], 3)
    assert [r["status"] for r in results] == ["Succeeded"] * 4
    assert len({r["outputs"]["pid"] for r in results}) == 1  # in the one pod
    starts, ends = [r["start_time"] for r in results], [r["end_time"] for r in results]
    assert max(starts) < min(ends), list(zip(starts, ends, strict=True))  # all at once


def test_the_gateway_answers_an_endpoint_call(
    sdk: PipeDeploy, worker: ChildProcess, data_store: str, tmp_path: Path
) -> None:
    name = unique("gateway-counter")
    created = sdk.create_deployment(
        f"{PIPELINES}:counter",
        name,
        mode="low_latency",
        max_retries=0,
    )
    gateway, url = start_gateway("on-postgresql", [sdk.work_pool_name], tmp_path, {})
    try:
        wait_for_http(f"{url}/health", 60, gateway)
        wait_until_up(sdk, name)
        answer = httpx.post(
            f"{url}/endpoints/{created['endpoint_url_path']}",
            headers={"Authorization": f"EndpointToken {created['endpoint_token']}"},
            json={"marker": "through-the-gateway"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        outputs = answer.json()["outputs"]
        assert outputs["count"] == 1
        execution = sdk.get_pipeline_execution(answer.json()["execution_id"])
        assert execution["status"] == "Succeeded"
        assert execution["parameters"]["marker"] == "through-the-gateway"
    finally:
        gateway.stop()


def test_the_server_keeps_its_connections_through_bursts(
    server_on_postgresql: tuple[str, str],
) -> None:
    """The stack's server pools its connections (`postgresql.SERVER_POOL`): after a burst of
    32 concurrent creates it keeps more than Prefect's 5 open, and the same ones after the next.
    With Prefect's pool (5 kept, up to 10 more closed after each use) every burst opened new
    ones (measured: the server's CPU per request a fifth higher)."""
    api_url, database_url = server_on_postgresql

    async def burst(http: httpx.AsyncClient, flow_id: str) -> None:
        answers = await asyncio.gather(
            *(http.post("/flow_runs/", json={"flow_id": flow_id}) for _ in range(32))
        )
        assert [a.status_code for a in answers] == [201] * 32

    async def kept_after_each_burst() -> tuple[set[int], set[int]]:
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
            flow = await http.post("/flows/", json={"name": unique("pool-burst")})
            await burst(http, flow.json()["id"])
            first = await asyncio.to_thread(connections_of, database_url)
            await burst(http, flow.json()["id"])
            return first, await asyncio.to_thread(connections_of, database_url)

    first, second = asyncio.run(kept_after_each_burst())
    # Prefect's pool: 7 open after each burst (its 5 and two of its services'), 3 of them
    # the same; this one: 22, 21 of them the same
    assert len(first & second) > 10, (first, second)


def test_timestamps_are_stored_as_the_instants_given(
    server_on_postgresql: tuple[str, str],
) -> None:
    """The server binds its timestamps as stdlib datetimes in UTC (`_compat_server.
    postgres_timestamps_plain`): a run's expected start given at +05:30 is stored, and read
    back through the API, as the same instant, and so is the time of its Scheduled state."""
    api_url, database_url = server_on_postgresql
    given = "2031-03-04T10:20:30.123456+05:30"
    with httpx.Client(base_url=api_url, timeout=30) as http:
        flow = http.post("/flows/", json={"name": unique("timestamps")})
        flow.raise_for_status()
        created = http.post(
            "/flow_runs/",
            json={
                "flow_id": flow.json()["id"],
                "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": given}},
            },
        )
        created.raise_for_status()
        run = http.get(f"/flow_runs/{created.json()['id']}").json()
    instant = datetime.fromisoformat(given)
    assert datetime.fromisoformat(run["expected_start_time"]) == instant
    assert datetime.fromisoformat(run["next_scheduled_start_time"]) == instant
    stored = fetch_value(
        database_url, "SELECT expected_start_time FROM flow_run WHERE id = $1::uuid", run["id"]
    )
    assert stored == instant and stored.utcoffset() == timedelta(0)
    state_time = fetch_value(
        database_url, "SELECT timestamp FROM flow_run_state WHERE flow_run_id = $1::uuid", run["id"]
    )
    assert abs(datetime.now(timezone.utc) - state_time) < timedelta(minutes=5)


def test_new_runs_labels_and_related_resources_are_read_as_prefect_reads_them(
    server_on_postgresql: tuple[str, str],
) -> None:
    """`_compat_server.lean_flow_run_reads` on PostgreSQL: every case of
    tests/support/server_reads.py answered as Prefect's own functions answer it, on the server's
    own database (rolled back after), then a run the server made and its Scheduled event, and a
    deployment limited to one run at a time."""
    api_url, database_url = server_on_postgresql
    for answers in asyncio.run(both_answers(database_url, create=False)):
        assert {case: ours for case, (_, ours) in answers.items()} == {
            case: prefects for case, (prefects, _) in answers.items()
        }
    check_the_run_and_its_event(asyncio.run(a_run_through_the_server(api_url)))
    assert asyncio.run(a_limited_deployments_runs(api_url)) == LIMITED_ANSWERS
