"""RAM admission end to end: a worker with 1200MiB never holds more, and enforces requests."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy, SpecError
from prefect_pipedeploy.prefect_api.published import read_capacities
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import awaiting_ram_messages, run_many, unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.processes import cmdline, peaks_during, start_worker

CAPACITY_MIB = 1200


@pytest.fixture(scope="module")
def worker(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    child = start_worker(
        pool, tmp_path_factory.mktemp("worker-logs"), "--ram-capacity", f"{CAPACITY_MIB}MiB"
    )

    async def published() -> dict[str, int]:
        async with get_client() as client:
            return await read_capacities(client, pool)

    eventually(
        lambda: run_coro_as_sync(published()), 30, 0.5, what="the worker published its capacity"
    )
    yield child
    child.stop()


def execution_processes(worker: ChildProcess) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(worker.popen.pid).children(recursive=False)
        if "prefect_pipedeploy.engine.elastic" in cmdline(p)
    ]


def test_request_larger_than_capacity_is_refused_at_creation(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    with pytest.raises(SpecError, match=r"larger than the worker's RAM capacity of 1\.2GiB"):
        sdk.create_deployment(f"{PIPELINES}:hog", unique("huge"), ram_request="2GiB")
    name = unique("fits")
    sdk.create_deployment(f"{PIPELINES}:hog", name, ram_request="1GiB")
    with pytest.raises(SpecError, match="lower ram_request or raise --ram-capacity"):
        sdk.update_deployment(name, ram_request="4GiB")
    sdk.delete_deployment(name)


def test_capacity_shown_in_get_deployment_and_the_pool_form(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    name = unique("shown")
    created = sdk.create_deployment(f"{PIPELINES}:hog", name, ram_request="256MiB")
    assert list(created["worker_ram_capacity"].values()) == ["1.2GiB"]

    async def form_text() -> str:
        async with get_client() as client:
            template = (await client.read_work_pool(pool)).base_job_template
            return template["variables"]["properties"]["ram_request"]["description"]

    assert "Workers of this pool hand out: " in run_coro_as_sync(form_text())
    assert "1.2GiB" in run_coro_as_sync(form_text())
    sdk.delete_deployment(name)


def test_burst_never_exceeds_capacity_and_waiting_runs_say_why(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = unique("burst")
    sdk.create_deployment(f"{PIPELINES}:hog", name, ram_request="400MiB")
    results, peak = peaks_during(
        {"processes": lambda: len(execution_processes(worker))},
        lambda: run_many(sdk, name, [{"mib": 32, "hold_s": 2} for _ in range(6)], delay_s=8),
    )
    assert [r["status"] for r in results] == ["Succeeded"] * 6
    # 3 x 400MiB fit in 1200MiB: never a fourth at once, and the capacity was used
    assert peak["processes"] == 3, peak

    messages = awaiting_ram_messages(results)
    assert messages, "no run showed that it waited for RAM"
    assert all(
        m.startswith("waiting for 400MiB of RAM: 1.2GiB of 1.2GiB held by") for m in messages
    )
    sdk.delete_deployment(name)


def test_elastic_run_over_its_request_is_stopped(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = unique("greedy")
    sdk.create_deployment(f"{PIPELINES}:hog", name, ram_request="400MiB", max_retries=0)
    result = sdk.run_deployment(name, {"mib": 700, "hold_s": 10}, timeout_s=90)
    assert result["status"] == "Error"
    assert "exceeded its RAM request of 400MiB (peak" in result["message"]
    assert "raise ram_request or lower the batch size" in result["message"]
    sdk.delete_deployment(name)


def test_pod_over_its_request_is_stopped_and_recreated(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = unique("greedy-pod")
    sdk.create_deployment(
        f"{PIPELINES}:hog", name, mode="low_latency", ram_request="500MiB", max_retries=0
    )
    wait_until_up(sdk, name)
    result = sdk.run_deployment(name, {"mib": 800, "hold_s": 10}, timeout_s=90)
    assert result["status"] == "Error"
    assert "exceeded its RAM request of 500MiB (peak" in result["message"]
    wait_until_up(sdk, name)
    assert sdk.run_deployment(name, {"mib": 16, "hold_s": 0}, timeout_s=60)["status"] == "Succeeded"
    sdk.delete_deployment(name)


def test_pod_waits_for_ram_until_room_frees(sdk: PipeDeploy, worker: ChildProcess) -> None:
    first, second = unique("big-pod"), unique("big-pod")
    sdk.create_deployment(f"{PIPELINES}:counter", first, mode="low_latency", ram_request="800MiB")
    wait_until_up(sdk, first)
    sdk.create_deployment(f"{PIPELINES}:counter", second, mode="low_latency", ram_request="800MiB")
    eventually(
        lambda: sdk.get_deployment(second),
        30,
        until=lambda deployment: (
            "waiting for 800MiB of RAM" in (deployment["status_message"] or "")
        ),
    )
    assert sdk.get_deployment(second)["status"] == "creation_pending"
    assert f"pod of {first}" in sdk.get_deployment(second)["status_message"]
    sdk.delete_deployment(first)
    wait_until_up(sdk, second)
    sdk.delete_deployment(second)
