"""Direct dispatch end to end (issue 14): a real gateway hands endpoint calls straight to the
low-latency pods of a real worker, with runs in flight: a burst across both paths (gateway calls
and runs made with the SDK), a parallel cap, a pod killed under a call it took. The worker's pods
run with their write gate on (`prefect_api.writegate`).

A run the pod took itself is told apart by its states: created Running with
`engine.direct.DIRECT_MESSAGE`, never Scheduled nor Pending; a run of the worker's path went
through Scheduled and Pending.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import psutil
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.engine.direct import DIRECT_MESSAGE
from prefect_pipedeploy.prefect_api.sealed import BLOCK_PREFIX, sealed_key
from prefect_pipedeploy.settings import env_name
from prefect_pipedeploy.stack import ChildProcess, wait_for_http
from tests.support.eventually import eventually
from tests.support.executions import unique
from tests.support.paths import PIPELINES
from tests.support.processes import cmdline, pod_processes, start_gateway, start_worker


@pytest.fixture(scope="module")
def stack(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("direct-logs")
    gateway, url = start_gateway("direct", [pool], logs, {})
    worker = None
    try:
        # the pods keep their creates apart from their other writes from the start (on a busy
        # SQLite server they do from its first refusal): every test here runs through the gate
        worker = start_worker(pool, logs, env={env_name("pod_write_gate"): "on"})
        wait_for_http(f"{url}/health", 60, gateway)
        yield {"url": url, "worker": worker}
    finally:
        for child in (worker, gateway):
            if child is not None:
                child.stop()


@pytest.fixture(scope="module")
def sdk(pool: str, stack: dict[str, Any]) -> PipeDeploy:
    return PipeDeploy(work_pool_name=pool)


@pytest.fixture(scope="module")
def gateway(stack: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack["url"], timeout=120) as session:
        yield session


def deploy_up(sdk: PipeDeploy, function: str, **settings: Any) -> dict[str, str]:
    """A low-latency endpoint deployment whose pod is up."""
    name = unique(function.replace("_", "-"))
    created = sdk.create_deployment(
        f"{PIPELINES}:{function}",
        name,
        mode="low_latency",
        ram_request="256MiB",
        **{"max_retries": 0, **settings},
    )
    eventually(
        lambda: sdk.get_deployment(name),
        90,
        until=lambda d: d["status"] == "up",
        what=f"the pod of {name} is up",
    )
    return {
        "name": name,
        "id": created["id"],
        "path": created["endpoint_url_path"],
        "token": created["endpoint_token"],
    }


def call(gateway: httpx.Client, deployed: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return gateway.post(
        f"/endpoints/{deployed['path']}",
        json=body,
        headers={"Authorization": f"EndpointToken {deployed['token']}"},
        follow_redirects=True,
    )


def history(run_ids: list[str]) -> dict[str, Any]:
    """Each run (start, end, run_count) and the types and messages of its states."""

    async def read() -> dict[str, Any]:
        async with get_client() as prefect:
            found = {}
            for run_id in run_ids:
                run = await prefect.read_flow_run(uuid.UUID(run_id))
                states = await prefect.read_flow_run_states(uuid.UUID(run_id))
                found[run_id] = {
                    "run": run,
                    "types": [s.type for s in states],
                    "messages": [s.message for s in states],
                }
            return found

    return run_coro_as_sync(read())


def took_directly(record: dict[str, Any]) -> bool:
    return record["types"][0] == StateType.RUNNING and record["messages"][0] == DIRECT_MESSAGE


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


def test_a_call_to_an_idle_pod_is_recorded_and_run_by_the_pod(
    gateway: httpx.Client, sdk: PipeDeploy, stack: dict[str, Any]
) -> None:
    """The pod creates the run already Running (two state writes in all: Running, Completed;
    with the flow's version and retry policy, so the engine sends no PATCH), runs it, and
    answers once its logs and outputs are stored: the answer carries the outputs, and the
    execution reads as any other (status, logs, outputs record)."""
    deployed = deploy_up(sdk, "counter")
    pod = psutil.Process(pod_of(stack["worker"], deployed["id"]))
    assert pod.environ().get(env_name("pod_write_gate")) == "on"  # the pod's gate is on
    answered = call(gateway, deployed, {"marker": "direct-one"})
    assert answered.status_code == 200, answered.text
    execution_id = answered.json()["execution_id"]
    assert answered.json()["outputs"]["count"] >= 1

    record = history([execution_id])[execution_id]
    assert record["types"] == [StateType.RUNNING, StateType.COMPLETED], record
    assert took_directly(record), record
    run = record["run"]
    assert run.run_count == 1 and run.start_time is not None and run.end_time is not None
    assert str(run.deployment_id) == deployed["id"]
    assert set(run.tags) >= {"pipedeploy", "endpoint"}
    assert run.flow_version is not None and run.empirical_policy.retries is not None

    # read right after the answer: complete, with no wait
    lines = [line["message"] for line in sdk.get_pipeline_execution_logs(execution_id)]
    assert any("marker=direct-one" in line for line in lines), lines
    execution = sdk.get_pipeline_execution(execution_id)
    assert execution["status"] == "Succeeded", execution
    outputs = answered.json()["outputs"]
    assert (
        sdk.get_pipeline_execution_output(execution_id, "count", value_only=True)
        == outputs["count"]
    )


def test_queue_mode_runs_one_at_a_time_across_both_paths(
    gateway: httpx.Client, sdk: PipeDeploy
) -> None:
    """Eight concurrent gateway calls and four runs made with the SDK, all to one queue-mode
    deployment: every one succeeds and no two ever run at once, whichever path each took;
    some calls went straight to the pod, the SDK's runs took the worker's path."""
    deployed = deploy_up(sdk, "counter")
    with ThreadPoolExecutor(12) as pool:
        calls = [
            pool.submit(call, gateway, deployed, {"marker": f"q{i}", "sleep_s": 0.3})
            for i in range(8)
        ]
        made = [
            pool.submit(
                sdk.run_deployment,
                deployed["name"],
                {"marker": f"s{i}", "sleep_s": 0.3},
                wait_for_completion=False,
            )
            for i in range(4)
        ]
        answers = [c.result() for c in calls]
        sdk_ids = [str(m.result()["execution_id"]) for m in made]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    call_ids = [a.json()["execution_id"] for a in answers]
    for execution_id in sdk_ids:
        eventually(
            lambda i=execution_id: sdk.get_pipeline_execution(i)["status"],
            120,
            until=lambda status: status == "Succeeded",
            what=f"execution {execution_id} succeeded",
        )
    records = history(call_ids + sdk_ids)
    spans = [(r["run"].start_time, r["run"].end_time) for r in records.values()]
    assert most_at_once(spans) == 1, spans
    assert any(took_directly(records[i]) for i in call_ids), records
    assert not any(took_directly(records[i]) for i in sdk_ids), records


def test_the_parallel_cap_holds_for_calls_straight_to_the_pod(
    gateway: httpx.Client, sdk: PipeDeploy
) -> None:
    """Eight concurrent one-second calls to a pod of two slots: all succeed, never more than two
    at a time; the pod took those it had room for, the others went the worker's way (that two
    do run at once is the back-to-back test's, tests/e2e/test_gateway.py)."""
    deployed = deploy_up(
        sdk, "async_sleeper", enable_parallel_executions=True, max_parallel_executions_per_pod=2
    )
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: call(gateway, deployed, {"marker": f"p{i}", "sleep_s": 1.0}), range(8)
            )
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    records = history([a.json()["execution_id"] for a in answers])
    spans = [(r["run"].start_time, r["run"].end_time) for r in records.values()]
    assert most_at_once(spans) <= 2, spans
    assert any(took_directly(r) for r in records.values()), records


def pod_of(worker: ChildProcess, deployment_id: str) -> int:
    pods = [p.pid for p in pod_processes(worker) if deployment_id in cmdline(p)]
    assert len(pods) == 1, pods
    return pods[0]


def test_a_pod_killed_under_a_call_it_took_ends_its_run_crashed(
    gateway: httpx.Client, sdk: PipeDeploy, stack: dict[str, Any]
) -> None:
    """SIGKILL the pod while a call it took runs: the caller is answered (500, the execution
    ended Error) and the run is Crashed with the reason; the pod comes back and the next call
    goes straight to it again."""
    deployed = deploy_up(sdk, "counter")
    pid = pod_of(stack["worker"], deployed["id"])
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, gateway, deployed, {"marker": "killed", "sleep_s": 30})
        running = eventually(
            lambda: sdk.list_pipeline_executions(deployed["name"]),
            30,
            until=lambda executions: any(e["status"] == "Running" for e in executions),
            what="the call's execution runs",
        )
        os.kill(pid, signal.SIGKILL)
        answered = waiting.result(timeout=120)
    assert answered.status_code == 500, answered.text
    assert answered.json()["status"] == "Error", answered.text
    execution_id = answered.json()["execution_id"]
    assert execution_id in {e["execution_id"] for e in running}
    record = history([execution_id])[execution_id]
    assert took_directly(record), record
    assert record["types"][-1] == StateType.CRASHED, record
    assert "pod" in (record["messages"][-1] or ""), record

    eventually(
        lambda: sdk.get_deployment(deployed["name"]),
        90,
        until=lambda d: d["status"] == "up" and d["pods"][0]["pid"] not in (None, pid),
        what="a new pod is up",
    )
    again = call(gateway, deployed, {"marker": "after"})
    assert again.status_code == 200, again.text
    record = history([again.json()["execution_id"]])[again.json()["execution_id"]]
    assert took_directly(record), record


def test_a_secret_input_of_a_call_the_pod_took_is_sealed_then_deleted(
    gateway: httpx.Client, sdk: PipeDeploy
) -> None:
    """The pod seals a secret input as the gateway would (in no run's parameters), the run
    reads it back, and the sealed value is deleted once the run is final."""
    deployed = deploy_up(
        sdk,
        "queue_step",
        inputs_mapping=[
            InputSource(
                pipeline_input_name="label",
                endpoint_input_name="label",
                data_type="string",
                is_secret=True,
            )
        ],
    )
    answered = call(gateway, deployed, {"label": "s3cr3t-direct", "sleep_s": 0})
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"]["label"] == "s3cr3t-direct"
    execution_id = answered.json()["execution_id"]
    record = history([execution_id])[execution_id]
    assert took_directly(record), record
    reference = record["run"].parameters["label"]
    assert "s3cr3t-direct" not in json.dumps(record["run"].parameters)
    key = sealed_key(reference)
    assert key is not None

    async def sealed_exists() -> bool:
        try:
            await Secret.aload(BLOCK_PREFIX + key)
        except ValueError:
            return False
        return True

    eventually(
        lambda: run_coro_as_sync(sealed_exists()),
        30,
        until=lambda exists: not exists,
        what=f"sealed value {key} deleted",
    )


def test_cancel_stops_a_run_the_pod_took(gateway: httpx.Client, sdk: PipeDeploy) -> None:
    """Cancel (the SDK's, as the UI's) reaches a run the pod created for a call: it ends
    Cancelled, and the next call is served."""
    deployed = deploy_up(
        sdk, "async_sleeper", enable_parallel_executions=True, max_parallel_executions_per_pod=2
    )
    accepted = gateway.post(
        f"/endpoints/{deployed['path']}?wait_for_completion=false",
        json={"marker": "to-cancel", "sleep_s": 60},
        headers={"Authorization": f"EndpointToken {deployed['token']}"},
    )
    assert accepted.status_code == 202, accepted.text
    execution_id = accepted.json()["execution_id"]
    assert took_directly(history([execution_id])[execution_id])
    sdk.cancel_pipeline_execution(execution_id, wait=True, timeout_s=60)
    record = history([execution_id])[execution_id]
    assert record["types"][-1] == StateType.CANCELLED, record
    again = call(gateway, deployed, {"marker": "after-cancel", "sleep_s": 0})
    assert again.status_code == 200, again.text


def test_a_call_the_pod_took_outlives_a_killed_gateway(
    sdk: PipeDeploy, pool: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A gateway killed (SIGKILL) right after it answered 202 for a call its pod took loses
    nothing: the execution runs to Succeeded, and a new gateway answers its result."""
    deployed = deploy_up(
        sdk, "async_sleeper", enable_parallel_executions=True, max_parallel_executions_per_pod=2
    )
    logs = tmp_path_factory.mktemp("killed-gateway")
    doomed, url = start_gateway("doomed", [pool], logs, {})
    try:
        wait_for_http(f"{url}/health", 60, doomed)
        accepted = httpx.post(
            f"{url}/endpoints/{deployed['path']}?wait_for_completion=false",
            json={"marker": "orphan", "sleep_s": 2},
            headers={"Authorization": f"EndpointToken {deployed['token']}"},
            timeout=60,
        )
        assert accepted.status_code == 202, accepted.text
        os.kill(doomed.popen.pid, signal.SIGKILL)
    finally:
        doomed.stop()
    execution_id = accepted.json()["execution_id"]
    assert took_directly(history([execution_id])[execution_id])
    eventually(
        lambda: sdk.get_pipeline_execution(execution_id)["status"],
        60,
        until=lambda status: status == "Succeeded",
        what="the execution succeeded without its gateway",
    )
    assert sdk.get_pipeline_execution_output(execution_id, "marker", value_only=True) == "orphan"


def test_a_queue_mode_deployment_on_two_workers_keeps_the_worker_path(
    gateway: httpx.Client, sdk: PipeDeploy, pool: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two workers serve one queue-mode deployment (a pod each): one at a time across them is
    counted in Prefect, which only the worker's path does, so every call takes it, and no two
    executions ever run at once."""
    deployed = deploy_up(sdk, "counter")
    second = start_worker(pool, tmp_path_factory.mktemp("second-worker"))
    try:
        eventually(
            lambda: sdk.get_deployment(deployed["name"])["pods"],
            90,
            until=lambda pods: len(pods) == 2 and all(p["status"] == "up" for p in pods),
            what="both workers' pods are up",
        )
        with ThreadPoolExecutor(4) as threads:
            answers = list(
                threads.map(
                    lambda i: call(gateway, deployed, {"marker": f"two{i}", "sleep_s": 0.3}),
                    range(4),
                )
            )
    finally:
        second.stop()
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    records = history([a.json()["execution_id"] for a in answers])
    assert not any(took_directly(r) for r in records.values()), records
    spans = [(r["run"].start_time, r["run"].end_time) for r in records.values()]
    assert most_at_once(spans) == 1, spans


def test_a_call_the_pod_took_that_fails_is_retried_and_answered(
    gateway: httpx.Client, sdk: PipeDeploy
) -> None:
    """A direct run that fails with a retry left is retried as any run (its worker queues it
    again, and the worker's path runs it): the waiting caller gets the second attempt's
    outputs."""
    deployed = deploy_up(sdk, "queue_step", max_retries=1)
    answered = call(gateway, deployed, {"label": "retried", "fail_attempts": 1, "sleep_s": 0})
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"] == {"label": "retried", "attempt": 2}
    execution_id = answered.json()["execution_id"]
    record = history([execution_id])[execution_id]
    assert took_directly(record), record
    assert record["run"].run_count == 2, record
    assert StateType.FAILED in record["types"] and record["types"][-1] == StateType.COMPLETED
