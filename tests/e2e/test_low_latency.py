"""Low-latency mode end to end: warm pods, in-process runs, parallelism, logs, crashes, timeouts."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import eventual_log_messages, run_many, unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.processes import cmdline, pod_processes


def deploy(sdk: PipeDeploy, function: str, **kwargs: object) -> str:
    name = unique(function.replace("_", "-"))
    sdk.create_deployment(f"{PIPELINES}:{function}", name, mode="low_latency", **kwargs)
    return name


def overlap_all(results: list[dict]) -> bool:
    """Whether every run was executing at one common moment."""
    return max(r["start_time"] for r in results) < min(r["end_time"] for r in results)


def test_pod_is_up_before_the_first_trigger_and_keeps_state(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = deploy(sdk, "counter")
    wait_until_up(sdk, name)
    assert len(pod_processes(worker)) >= 1
    counts = [sdk.run_deployment(name, {"marker": f"m{i}"}, timeout_s=60) for i in range(3)]
    assert [e["status"] for e in counts] == ["Succeeded"] * 3
    # the module-level counter keeps growing: the same process ran all three
    assert [e["outputs"]["count"] for e in counts] == [1, 2, 3]
    assert len({e["outputs"]["pid"] for e in counts}) == 1
    assert "ready" in " ".join(sdk.get_deployment_logs(name)).lower()


def test_async_runs_in_parallel_on_the_pods_loop(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "async_sleeper", enable_parallel_executions=True)
    wait_until_up(sdk, name)
    results = run_many(sdk, name, [{"marker": f"a{i}", "sleep_s": 8} for i in range(6)])
    assert [r["status"] for r in results] == ["Succeeded"] * 6
    assert len({r["outputs"]["pid"] for r in results}) == 1
    # the six 8-second sleeps ran at the same time in the one pod (8 s: a state change that
    # meets a busy SQLite database is retried seconds later)
    assert overlap_all(results), [(r["start_time"], r["end_time"]) for r in results]
    for result in results:
        lines = eventual_log_messages(sdk, result["execution_id"])
        markers = [line for line in lines if line.startswith("marker=")]
        assert markers == [f"marker={result['outputs']['marker']}"]


def test_sync_runs_each_in_its_own_thread_with_own_logs(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = deploy(
        sdk, "counter", enable_parallel_executions=True, max_parallel_executions_per_pod=4
    )
    wait_until_up(sdk, name)
    results = run_many(sdk, name, [{"marker": f"s{i}", "sleep_s": 8} for i in range(4)])
    assert [r["status"] for r in results] == ["Succeeded"] * 4
    assert overlap_all(results)
    assert len({r["outputs"]["thread"] for r in results}) == 4
    assert len({r["outputs"]["pid"] for r in results}) == 1
    for i, result in enumerate(sorted(results, key=lambda r: r["parameters"]["marker"])):
        lines = eventual_log_messages(sdk, result["execution_id"])
        # print() inside the run (log_prints) is attached to this run alone
        assert [line for line in lines if line.startswith("marker=")] == [f"marker=s{i}"]


def test_parallel_cap_makes_the_next_run_wait(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(
        sdk, "async_sleeper", enable_parallel_executions=True, max_parallel_executions_per_pod=2
    )
    wait_until_up(sdk, name)
    results = run_many(sdk, name, [{"marker": f"c{i}", "sleep_s": 5} for i in range(3)])
    assert [r["status"] for r in results] == ["Succeeded"] * 3
    spans = sorted((r["start_time"], r["end_time"]) for r in results)
    # the first two ran together; the third started only once one of them had ended
    assert spans[1][0] < spans[0][1]
    assert spans[2][0] >= min(spans[0][1], spans[1][1])


def test_killed_pod_is_recreated_and_its_run_crashes(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "counter", max_retries=0)
    wait_until_up(sdk, name)
    before = {p.pid for p in pod_processes(worker)}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            sdk.run_deployment, name, {"marker": "doomed", "sleep_s": 30}, True, 90
        )
        eventually(
            lambda: sdk.list_pipeline_executions(name),
            30,
            0.2,
            until=lambda executions: any(e["status"] == "Running" for e in executions),
        )
        ours = [p for p in pod_processes(worker) if p.pid in before]
        victim = [p for p in ours if str(sdk.get_deployment(name)["id"]) in cmdline(p)]
        assert victim
        os.kill(victim[0].pid, signal.SIGKILL)
        crashed = future.result()
    assert crashed["status"] == "Error"
    assert "pod" in crashed["message"] and "killed (SIGKILL)" in crashed["message"]
    wait_until_up(sdk, name)
    after = sdk.run_deployment(name, {"marker": "after"}, timeout_s=60)
    assert after["status"] == "Succeeded"
    assert after["outputs"]["count"] == 1  # a fresh pod
    assert after["outputs"]["pid"] != victim[0].pid


def test_async_run_times_out(sdk: PipeDeploy, worker: ChildProcess) -> None:
    # 3 s, not 1: the timeout bounds the whole run, Prefect's own writes included, and on a
    # busy CI machine those alone once took over a second for the quick run below
    name = deploy(sdk, "async_sleeper", execution_timeout_s=3, max_retries=0)
    wait_until_up(sdk, name)
    result = sdk.run_deployment(name, {"sleep_s": 30}, timeout_s=60)
    assert result["status"] == "Failed"
    assert "timed out after 3 s" in result["message"]
    quick = sdk.run_deployment(name, {"sleep_s": 0.1}, timeout_s=60)
    assert quick["status"] == "Succeeded"


def test_sync_run_times_out_and_pod_survives(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "counter", execution_timeout_s=3, max_retries=0)  # 3 s: see above
    wait_until_up(sdk, name)
    result = sdk.run_deployment(name, {"sleep_s": 20}, timeout_s=60)
    assert result["status"] == "Failed"
    assert "timed out after 3 s" in result["message"]
    assert sdk.run_deployment(name, {"sleep_s": 0}, timeout_s=60)["status"] == "Succeeded"


def test_import_error_shows_in_deployment_logs(
    sdk: PipeDeploy, worker: ChildProcess, tmp_path
) -> None:
    source = tmp_path / "broken_pipeline.py"
    source.write_text("def model(x: int = 1) -> dict:\n    return {'x': x}\n")
    name = unique("broken-pod")
    sdk.create_deployment(f"{source}:model", name, mode="low_latency")
    source.write_text(
        "import not_a_module_anywhere\n\ndef model(x: int = 1) -> dict:\n    return {}\n"
    )
    eventually(
        lambda: sdk.get_deployment(name),
        60,
        until=lambda deployment: deployment["status"] == "creation_failed",
    )
    assert "not_a_module_anywhere" in sdk.get_deployment(name)["status_message"]
    assert any("not_a_module_anywhere" in line for line in sdk.get_deployment_logs(name))


def test_deleting_the_deployment_stops_its_pod(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "counter")
    deployment_id = wait_until_up(sdk, name)["id"]
    assert any(deployment_id in cmdline(p) for p in pod_processes(worker))
    sdk.delete_deployment(name)
    eventually(
        lambda: [cmdline(p) for p in pod_processes(worker)],
        30,
        until=lambda pods: not any(deployment_id in line for line in pods),
        what="the deleted deployment's pod stopped",
    )
