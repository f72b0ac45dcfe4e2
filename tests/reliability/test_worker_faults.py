"""The worker and its executions' processes under faults: stopped, killed, crashing pipelines.

Each test starts its own workers (short drain grace) and ends with the pool's ledger
(tests/support/ledger.py).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.runtimes.process import orphaned_runtime_processes
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import deploy, pool_per_test, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.processes import cmdline, start_worker

DRAIN_GRACE_S = 5
ENV = {"PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": str(DRAIN_GRACE_S)}


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


pool, sdk = pool_per_test("faults")  # one pool per test: each test owns its workers


def start(sdk: PipeDeploy, name: str, inputs: dict) -> str:
    return sdk.run_deployment(name, inputs, wait_for_completion=False)["execution_id"]


def status(sdk: PipeDeploy, execution_id: str) -> dict:
    return sdk.get_pipeline_execution(execution_id)


def running(
    sdk: PipeDeploy, execution_id: str, timeout_s: float = 60, until: tuple[str, ...] = ("Running",)
) -> dict:
    return eventually(
        lambda: status(sdk, execution_id), timeout_s, until=lambda e: e["status"] in until
    )


def final(sdk: PipeDeploy, execution_id: str, timeout_s: float = 90) -> dict:
    return eventually(
        lambda: status(sdk, execution_id),
        timeout_s,
        until=lambda e: e["status"] not in ("Pending", "Running"),
    )


def children_of(worker: ChildProcess) -> list[psutil.Process]:
    try:
        return psutil.Process(worker.popen.pid).children(recursive=True)
    except psutil.Error:
        return []


def test_sigterm_stops_the_worker_gracefully(sdk: PipeDeploy, pool: str, logs: Path) -> None:
    """Before: SIGTERM killed `pipedeploy worker` at once: its pods were left to notice, its
    elastic executions ran on without a worker, and nothing said why a run ended. Now it drains:
    runs that finish within the grace succeed; the others end Crashed, saying the worker stopped;
    no process is left."""
    worker = start_worker(pool, logs, env=ENV)
    try:
        quick_pod = deploy(sdk, "counter", mode="low_latency", max_retries=0)
        slow_pod = deploy(sdk, "counter", mode="low_latency", max_retries=0)
        slow_elastic = deploy(sdk, "hog", max_retries=0, ram_request="256MiB")
        wait_until_up(sdk, quick_pod)
        wait_until_up(sdk, slow_pod)
        slow = start(sdk, slow_pod, {"marker": "slow", "sleep_s": 120})
        elastic = start(sdk, slow_elastic, {"mib": 16, "hold_s": 120})
        for execution_id in (slow, elastic):
            running(sdk, execution_id)
        # the quick run starts last, so that it is still running when SIGTERM comes (under
        # load it may end just before: it must have succeeded either way)
        quick = start(sdk, quick_pod, {"marker": "quick", "sleep_s": 3})
        running(sdk, quick, until=("Running", "Succeeded"))
        processes = children_of(worker)
        assert worker.stop(grace_s=DRAIN_GRACE_S + 25) == 0, worker.log_tail()
    finally:
        worker.stop()
    assert final(sdk, quick)["status"] == "Succeeded"
    for execution_id in (slow, elastic):
        ended = final(sdk, execution_id)
        assert ended["status"] == "Error", ended
        assert "stopped" in ended["message"] and f"{DRAIN_GRACE_S} s" in ended["message"], ended
    eventually(lambda: [p for p in processes if p.is_running()], 15, until=lambda left: not left)
    check_ledger(pool, max_attempts=1)


def test_a_killed_workers_executions_are_adopted_by_the_next(
    sdk: PipeDeploy, pool: str, logs: Path
) -> None:
    """Before: a worker killed outright left its elastic executions and pods running, unknown to
    the next worker on the machine, which handed out their RAM again. Now the next worker adopts
    them: counts their RAM until they end, and they finish their runs."""
    first = start_worker(pool, logs, env=ENV)
    try:
        pod_deployment = deploy(sdk, "counter", mode="low_latency", max_retries=0)
        elastic_deployment = deploy(sdk, "hog", max_retries=0, ram_request="300MiB")
        wait_until_up(sdk, pod_deployment)
        # both run until the next worker has adopted them (before, with 8 s sleeps, the pod's
        # run could end, and the orphaned pod with it, before a slow next worker looked: CI)
        gate = str(logs / "adopted")
        in_pod = start(sdk, pod_deployment, {"marker": "orphan", "gate": gate})
        in_process = start(sdk, elastic_deployment, {"mib": 16, "hold_s": 0, "gate": gate})
        running(sdk, in_pod)
        running(sdk, in_process)
        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
    finally:
        first.stop()
    orphans = eventually(orphaned_runtime_processes, 10, until=lambda found: len(found) >= 2)
    kinds = {kind for _, kind, _ in orphans}
    assert {"elastic", "pod"} <= kinds, orphans
    (orphan_pid,) = [pid for pid, kind, ident in orphans if ident == in_process]
    workdir = Path(psutil.Process(orphan_pid).environ()["PIPEDEPLOY_RUN_WORKDIR"])
    assert workdir.name.startswith("pipedeploy-run-") and workdir.exists()  # the dead worker's
    second = start_worker(pool, logs, env=ENV)
    try:
        adopted = eventually(
            lambda: second.log_path.read_text(errors="replace").count("Adopted the"),
            60,
            until=lambda count: count >= 2,
        )
        assert adopted >= 2
        Path(gate).touch()
        assert final(sdk, in_pod)["status"] == "Succeeded"
        assert final(sdk, in_process)["status"] == "Succeeded"
        eventually(
            lambda: [
                p
                for p in psutil.process_iter(["cmdline"])
                if in_process in " ".join(p.info["cmdline"] or [])
            ],
            30,
            until=lambda left: not left,
        )
        eventually(workdir.exists, 30, until=lambda exists: not exists)  # removed after it
        after = sdk.run_deployment(pod_deployment, {"marker": "new worker"})
        assert after["status"] == "Succeeded"
        check_ledger(pool, max_attempts=1)
    finally:
        second.stop()


@pytest.mark.parametrize("pipeline", ["suicide", "exits"])
def test_a_pipeline_that_kills_its_own_process_is_retried_then_explained(
    sdk: PipeDeploy, pool: str, logs: Path, pipeline: str
) -> None:
    """A pipeline that SIGKILLs its process or calls `os._exit` ends Crashed with the cause in
    words after its retries (capped), in an elastic process and in a pod (re-created after)."""
    worker = start_worker(pool, logs, env=ENV)
    try:
        elastic = deploy(sdk, pipeline, max_retries=1)
        low_latency = deploy(sdk, pipeline, mode="low_latency", max_retries=1)
        wait_until_up(sdk, low_latency)
        for name in (elastic, low_latency):
            ended = sdk.run_deployment(name, {}, timeout_s=120)
            assert ended["status"] == "Error", ended
            assert ended["attempts"] == 2
            words = "SIGKILL" if pipeline == "suicide" else "exited with code 3"
            assert words in ended["message"], ended
        wait_until_up(sdk, low_latency, timeout_s=60)  # the pod came back
        check_ledger(pool, max_attempts=2)
    finally:
        worker.stop()
    assert not [p for p in psutil.process_iter(["cmdline"]) if pool in cmdline(p)]


def test_killing_an_elastic_execution_ends_it_crashed(
    sdk: PipeDeploy, pool: str, logs: Path
) -> None:
    """SIGKILL of an elastic execution's process: Crashed within seconds with the cause."""
    worker = start_worker(pool, logs, env=ENV)
    try:
        name = deploy(sdk, "hog", max_retries=0, ram_request="256MiB")
        execution_id = start(sdk, name, {"mib": 16, "hold_s": 60})
        running(sdk, execution_id)
        victim = eventually(
            lambda: [p for p in children_of(worker) if execution_id in cmdline(p)],
            30,
        )
        killed_at = time.monotonic()
        victim[0].kill()
        ended = final(sdk, execution_id, 30)
        assert time.monotonic() - killed_at < 10
        assert ended["status"] == "Error" and "SIGKILL" in ended["message"], ended
        check_ledger(pool, max_attempts=1)
    finally:
        worker.stop()
