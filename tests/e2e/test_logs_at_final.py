"""An execution reported final has all its log lines: pods and elastic runs, through the
gateway, the SDK and Prefect's own state; a run whose process is killed keeps what it sent.

A real worker, a real gateway and real pod and elastic processes. The pipelines print N
numbered lines; each test reads the execution's logs as soon as it is reported final and looks
for every line. Before the fix, the lines left the execution's process in Prefect's 2 s
batches: right after a 200 from the gateway (elastic and low latency alike),
`get_pipeline_execution_logs` returned 2 of a run's 16 lines (the worker's two; a pod's run had
none), and the rest appeared about a second later.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.stack import ChildProcess, free_port, start_child, wait_for_http
from tests.support.eventually import eventually
from tests.support.executions import unique, wait_until_up
from tests.support.processes import cmdline

N = 12

PIPELINES = textwrap.dedent(
    """
    import asyncio
    import time


    def numbered(tag: str, n: int = 12, sleep_s: float = 0.0) -> dict:
        for i in range(n):
            print(f"{tag} line {i:02d}")
        time.sleep(sleep_s)
        return {"lines": n}


    async def numbered_async(tag: str, n: int = 12, pause_s: float = 0.15) -> dict:
        for i in range(n):
            print(f"{tag} line {i:02d}")
            await asyncio.sleep(pause_s)
        return {"lines": n}
    """
)

TAG = [InputSource(pipeline_input_name="tag", endpoint_input_name="tag", data_type="string")]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipelines") / "numbered.py"
    path.write_text(PIPELINES)
    return path


@pytest.fixture(scope="module")
def gateway(
    pool: str, worker: ChildProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """`pipedeploy gateway` for the module's pool, as a user starts it."""
    port = free_port()
    child = start_child(
        "gateway-logs",
        [sys.executable, "-m", "prefect_pipedeploy.cli", "gateway", "--pool", pool]
        + ["--port", str(port)],
        tmp_path_factory.mktemp("gateway") / "gateway.log",
        env={**os.environ},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", 90, child)
        with httpx.Client(base_url=url, timeout=120) as http:
            yield http
    finally:
        child.stop()


def deploy(sdk: PipeDeploy, pipelines: Path, function: str, mode: str, **kwargs: Any) -> dict:
    name = unique(f"logs-{function.replace('_', '-')}-{mode.replace('_', '-')}")
    created = sdk.create_deployment(
        f"{pipelines}:{function}",
        name,
        mode=mode,
        inputs_mapping=TAG,
        ram_request="128MiB",
        **kwargs,
    )
    if mode == "low_latency":
        wait_until_up(sdk, name, timeout_s=90)
    return {"name": name, **created}


def tag_of(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:6]}"


def numbered(tag: str) -> list[str]:
    return [f"{tag} line {i:02d}" for i in range(N)]


def lines_of(tag: str, messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith(f"{tag} line ")]


def sdk_messages(sdk: PipeDeploy, execution_id: str) -> list[str]:
    return [line["message"] for line in sdk.get_pipeline_execution_logs(execution_id)]


def call(gateway: httpx.Client, deployment: dict, tag: str) -> str:
    """One endpoint call answered 200; the execution's id."""
    response = gateway.post(
        f"/endpoints/{deployment['endpoint_url_path']}",
        json={"tag": tag},
        headers={"Authorization": f"EndpointToken {deployment['endpoint_token']}"},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["execution_id"])


def final_in_prefect(deployment: dict, tag: str) -> list[str]:
    """Create a run through Prefect, poll it every 20 ms until Prefect says it is final, then
    read its logs through Prefect's client at once."""

    async def run() -> list[str]:
        async with get_client() as client:
            flow_run = await client.create_flow_run_from_deployment(
                uuid.UUID(deployment["id"]), parameters={"tag": tag}
            )
            deadline = time.monotonic() + 120  # polled here, async, every 20 ms: what it measures
            while True:
                flow_run = await client.read_flow_run(flow_run.id)
                if flow_run.state is not None and flow_run.state.is_final():
                    break
                assert time.monotonic() < deadline, flow_run.state
                await asyncio.sleep(0.02)
            assert flow_run.state.is_completed(), flow_run.state
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
                sort=LogSort.TIMESTAMP_ASC,
            )
        return [log.message for log in logs]

    return run_coro_as_sync(run())


def assert_complete(tag: str, messages: list[str], how: str) -> None:
    assert lines_of(tag, messages) == numbered(tag), (
        f"{how}: {len(lines_of(tag, messages))} of the run's {N} lines were stored: {messages}"
    )
    assert any(m.startswith("Beginning flow run") for m in messages), messages


def test_a_pod_run_has_all_its_logs_when_reported_final(
    sdk: PipeDeploy, pipelines: Path, gateway: httpx.Client
) -> None:
    deployment = deploy(sdk, pipelines, "numbered", "low_latency")
    for _ in range(3):
        tag = tag_of("pod-gateway")
        assert_complete(tag, sdk_messages(sdk, call(gateway, deployment, tag)), "after a 200")
    for _ in range(3):
        tag = tag_of("pod-sdk")
        execution = sdk.run_deployment(deployment["name"], {"tag": tag})
        assert execution["status"] == "Succeeded", execution
        assert_complete(tag, sdk_messages(sdk, execution["execution_id"]), "SDK status Succeeded")
    tag = tag_of("pod-prefect")
    assert_complete(tag, final_in_prefect(deployment, tag), "Prefect state Completed")


def test_an_elastic_run_has_all_its_logs_when_reported_final(
    sdk: PipeDeploy, pipelines: Path, gateway: httpx.Client
) -> None:
    deployment = deploy(sdk, pipelines, "numbered", "elastic")
    tag = tag_of("elastic-gateway")
    assert_complete(tag, sdk_messages(sdk, call(gateway, deployment, tag)), "after a 200")
    tag = tag_of("elastic-prefect")
    assert_complete(tag, final_in_prefect(deployment, tag), "Prefect state Completed")


def test_parallel_runs_of_a_pod_each_have_their_own_logs_when_final(
    sdk: PipeDeploy, pipelines: Path, gateway: httpx.Client
) -> None:
    deployment = deploy(
        sdk,
        pipelines,
        "numbered_async",
        "low_latency",
        enable_parallel_executions=True,
        max_parallel_executions_per_pod=4,
    )
    tags = [tag_of(f"parallel{k}") for k in range(4)]

    def called_then_read(tag: str) -> tuple[str, dict[str, Any]]:
        execution_id = call(gateway, deployment, tag)
        messages = sdk_messages(sdk, execution_id)
        return tag, {"messages": messages, "execution": sdk.get_pipeline_execution(execution_id)}

    with ThreadPoolExecutor(len(tags)) as pool:
        results = dict(pool.map(called_then_read, tags))
    for tag in tags:
        messages = results[tag]["messages"]
        assert_complete(tag, messages, "after a 200")
        assert not [m for m in messages if " line " in m and not m.startswith(tag)], messages
    # runs did run side by side in the pod, their lines interleaved (else this would not test
    # that they stay separate)
    spans = sorted(
        (e["start_time"], e["end_time"]) for e in (results[t]["execution"] for t in tags)
    )
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    return eventually(predicate, timeout_s, 0.2, what=what)


def process_of(worker: ChildProcess, needle: str) -> psutil.Process | None:
    for process in psutil.Process(worker.popen.pid).children(recursive=True):
        if needle in cmdline(process):
            return process
    return None


def start_and_kill(
    sdk: PipeDeploy, deployment: dict, worker: ChildProcess, needle: Callable[[str], str]
) -> tuple[str, list[str], dict[str, Any]]:
    """Start a run that prints N lines then sleeps, wait until its lines are in the API (the
    execution process sends them while it runs), SIGKILL the process, wait until it is final."""
    tag = tag_of("killed")
    execution = sdk.run_deployment(
        deployment["name"], {"tag": tag, "sleep_s": 120}, wait_for_completion=False
    )
    execution_id = execution["execution_id"]
    wait_for(
        lambda: len(lines_of(tag, sdk_messages(sdk, execution_id))) == N,
        90,
        "the running execution's lines never reached the API",
    )
    process = wait_for(lambda: process_of(worker, needle(execution_id)), 10, "no process")
    process.send_signal(signal.SIGKILL)
    final = wait_for(
        lambda: (
            (e := sdk.get_pipeline_execution(execution_id))["status"] in ("Error", "Failed") and e
        ),
        60,
        "the killed execution never ended",
    )
    return tag, sdk_messages(sdk, execution_id), final


def test_a_killed_elastic_run_keeps_the_lines_it_sent(
    sdk: PipeDeploy, pipelines: Path, worker: ChildProcess
) -> None:
    """Held before the fix too (Prefect's log worker sends every 2 s); guards that the run's
    own sender keeps sending while the run runs, not only at its final state."""
    deployment = deploy(sdk, pipelines, "numbered", "elastic", max_retries=0)
    tag, messages, final = start_and_kill(
        sdk, deployment, worker, lambda execution_id: execution_id
    )
    assert final["status"] == "Error", final
    assert lines_of(tag, messages) == numbered(tag), messages


def test_a_run_of_a_killed_pod_keeps_the_lines_it_sent(
    sdk: PipeDeploy, pipelines: Path, worker: ChildProcess
) -> None:
    """Held before the fix too (see the elastic test); a pod sends a running run's lines."""
    deployment = deploy(sdk, pipelines, "numbered", "low_latency", max_retries=0)
    tag, messages, final = start_and_kill(
        sdk, deployment, worker, lambda _: f"--deployment-id {deployment['id']}"
    )
    assert final["status"] == "Error", final
    assert lines_of(tag, messages) == numbered(tag), messages


def test_a_pod_run_that_times_out_has_all_its_logs_when_failed(
    sdk: PipeDeploy, pipelines: Path, worker: ChildProcess
) -> None:
    """The pod ends a `def` run past its timeout itself (Failed, outside Prefect's engine).
    Before the fix its lines were still waiting for the next 2 s batch when it was Failed."""
    deployment = deploy(
        sdk, pipelines, "numbered", "low_latency", execution_timeout_s=1, max_retries=0
    )
    tag = tag_of("timeout")
    execution = sdk.run_deployment(deployment["name"], {"tag": tag, "sleep_s": 20})
    assert execution["status"] == "Failed", execution
    assert "timed out" in (execution["message"] or ""), execution
    assert_complete(tag, sdk_messages(sdk, execution["execution_id"]), "SDK status Failed")
