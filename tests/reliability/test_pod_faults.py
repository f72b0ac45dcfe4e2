"""Pods under faults and changes, with runs in flight: nothing stranded, nothing lost.

One real worker for the module, with a short drain grace and heartbeat timeout so the faults
play out in seconds; each test ends with the pool's ledger (tests/support/ledger.py).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import deploy, eventual_log_messages, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.processes import cmdline, pod_processes, start_worker

DRAIN_GRACE_S = 6
HEARTBEAT_TIMEOUT_S = 5


@pytest.fixture(scope="module")
def worker(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    env = {
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": str(DRAIN_GRACE_S),
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_POD_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
    }
    child = start_worker(pool, tmp_path_factory.mktemp("worker-logs"), env=env)
    yield child
    child.stop()


def pods_of(worker: ChildProcess, sdk: PipeDeploy, name: str) -> list[psutil.Process]:
    deployment_id = sdk.get_deployment(name)["id"]
    return [p for p in pod_processes(worker) if deployment_id in cmdline(p)]


def pod_of(worker: ChildProcess, sdk: PipeDeploy, name: str) -> psutil.Process:
    pods = eventually(lambda: pods_of(worker, sdk, name), 30, what=f"the pod of {name}")
    assert len(pods) == 1, pods
    return pods[0]


def start(sdk: PipeDeploy, name: str, inputs: dict) -> str:
    return sdk.run_deployment(name, inputs, wait_for_completion=False)["execution_id"]


def status_of(sdk: PipeDeploy, execution_id: str) -> dict:
    return sdk.get_pipeline_execution(execution_id)


def test_a_token_rotation_keeps_the_warm_pod(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Before: every update of a low-latency deployment stopped its pod; three token rotations
    in a row restarted it three times (new pid, module state gone), and a run that started just
    before a stop stayed Running for 22 minutes."""
    name = deploy(sdk, "counter", mode="low_latency", execution_rule="endpoint")
    wait_until_up(sdk, name)
    first = sdk.run_deployment(name, {"marker": "before"})
    for _ in range(3):
        sdk.generate_new_endpoint_token(name)
    sdk.update_deployment(name, description="rotated", max_retries=2)
    time.sleep(3)  # longer than the worker's reconcile poll
    second = sdk.run_deployment(name, {"marker": "after"})
    assert second["status"] == "Succeeded"
    assert second["outputs"]["pid"] == first["outputs"]["pid"]  # the same warm pod
    assert second["outputs"]["count"] == first["outputs"]["count"] + 1  # its module state kept
    check_ledger(pool)


def test_a_timeout_set_later_reaches_the_running_pod(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Settings a pod reads per run (here execution_timeout_s) reach it without a restart."""
    name = deploy(sdk, "counter", mode="low_latency", max_retries=0)
    before = sdk.run_deployment(name, {"marker": "a"})
    sdk.update_deployment(name, execution_timeout_s=1)
    time.sleep(3)
    slow = sdk.run_deployment(name, {"marker": "slow", "sleep_s": 4})
    assert slow["status"] == "Failed", slow
    assert "timed out after 1 s" in slow["message"]
    after = sdk.run_deployment(name, {"marker": "b"})
    assert after["outputs"]["pid"] == before["outputs"]["pid"]
    check_ledger(pool, max_attempts=1)


def test_a_recreated_pod_drains_its_runs_first(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Before: the pod got SIGTERM at once, so a run in flight died with it, and a run that had
    just finished lost its logs. Now a change of what runs in the pod (its RAM here) re-creates
    it only after the running execution finished, with all its logs."""
    name = deploy(sdk, "counter", mode="low_latency", max_retries=0)
    wait_until_up(sdk, name)
    old_pid = pod_of(worker, sdk, name).pid
    in_flight = start(sdk, name, {"marker": "drained", "sleep_s": 3})
    eventually(lambda: status_of(sdk, in_flight)["status"], 30, until=lambda s: s == "Running")
    sdk.update_deployment(name, ram_request="600MiB")
    done = eventually(
        lambda: status_of(sdk, in_flight), 30, until=lambda e: e["status"] != "Running"
    )
    assert done["status"] == "Succeeded", done
    assert "marker=drained" in eventual_log_messages(sdk, in_flight)
    eventually(
        lambda: {p.pid for p in pods_of(worker, sdk, name)},
        60,
        until=lambda pids: pids and old_pid not in pids,
    )
    after = sdk.run_deployment(name, {"marker": "new pod"})
    assert after["status"] == "Succeeded" and after["outputs"]["pid"] != old_pid
    check_ledger(pool, max_attempts=1)


def test_a_run_past_the_drain_grace_ends_crashed_with_the_reason(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Before: a disabled deployment's pod was stopped under its running execution, which then
    stayed Running forever (the queue counted it as active) and no later run started."""
    name = deploy(sdk, "counter", mode="low_latency", max_retries=0)
    wait_until_up(sdk, name)
    stuck = start(sdk, name, {"marker": "long", "sleep_s": 120})
    eventually(lambda: status_of(sdk, stuck)["status"], 30, until=lambda s: s == "Running")
    stopped_at = time.monotonic()
    sdk.update_deployment(name, disabled=True)
    ended = eventually(
        lambda: status_of(sdk, stuck), DRAIN_GRACE_S + 30, until=lambda e: e["status"] != "Running"
    )
    assert ended["status"] == "Error", ended  # Crashed
    assert "was stopped" in ended["message"] and f"within the {DRAIN_GRACE_S} s" in ended["message"]
    assert time.monotonic() - stopped_at < DRAIN_GRACE_S + 20
    assert sdk.get_deployment(name)["status"] == "disabled"
    check_ledger(pool, max_attempts=1)


def test_a_killed_pod_crashes_its_runs_and_strands_none(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Before: with six runs in flight on a parallel pod and new runs arriving every 0.1 s, a
    SIGKILL of the pod ended the six Crashed but left a run claimed at that moment Pending for
    over 180 s (`send_run` hit the closed channel)."""
    name = deploy(
        sdk,
        "async_sleeper",
        mode="low_latency",
        enable_parallel_executions=True,
        max_parallel_executions_per_pod=6,
        max_retries=0,
    )
    wait_until_up(sdk, name)
    victim = pod_of(worker, sdk, name)
    long_runs = [start(sdk, name, {"marker": f"long-{i}", "sleep_s": 20}) for i in range(6)]
    eventually(
        lambda: [status_of(sdk, e)["status"] for e in long_runs],
        30,
        until=lambda s: s.count("Running") == 6,
    )
    with ThreadPoolExecutor(2) as pool_of_callers:
        later = pool_of_callers.submit(
            lambda: [
                (start(sdk, name, {"marker": f"short-{i}", "sleep_s": 0.2}), time.sleep(0.1))[0]
                for i in range(20)
            ]
        )
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        crashed = eventually(
            lambda: [status_of(sdk, e) for e in long_runs],
            30,
            until=lambda runs: all(r["status"] == "Error" for r in runs),
        )
        crashed_after_s = time.monotonic() - killed_at
        short_runs = later.result()
    assert crashed_after_s < 15, crashed_after_s  # in words: within seconds, not minutes
    assert all("SIGKILL" in r["message"] for r in crashed), crashed
    ledger = check_ledger(pool, max_attempts=1, settle_s=120)
    short = [r for r in ledger.runs if str(r.id) in short_runs]
    assert len(short) == 20
    assert all(r.state is not None and r.state.is_completed() for r in short), [
        (r.state.name, r.state.message) for r in short if r.state is not None
    ]


def test_a_stopped_pod_is_detected_killed_and_recreated(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Before: a pod stopped with SIGSTOP kept its runs Running forever: nothing watched for a
    pod that is alive but no longer answers. Now its heartbeats stop, the worker kills it, its
    run ends Crashed saying so, and a new pod serves; SIGCONT brings nothing back."""
    name = deploy(sdk, "counter", mode="low_latency", max_retries=0)
    wait_until_up(sdk, name)
    frozen = pod_of(worker, sdk, name)
    stuck = start(sdk, name, {"marker": "frozen", "sleep_s": 60})
    eventually(lambda: status_of(sdk, stuck)["status"], 30, until=lambda s: s == "Running")
    os.kill(frozen.pid, signal.SIGSTOP)
    ended = eventually(
        lambda: status_of(sdk, stuck),
        HEARTBEAT_TIMEOUT_S + 30,
        until=lambda e: e["status"] != "Running",
    )
    assert ended["status"] == "Error", ended
    assert "stopped responding" in ended["message"], ended
    assert not psutil.pid_exists(frozen.pid) or frozen.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(ProcessLookupError):
        os.kill(frozen.pid, signal.SIGCONT)
    wait_until_up(sdk, name, timeout_s=60)
    fresh = sdk.run_deployment(name, {"marker": "fresh"})
    assert fresh["status"] == "Succeeded" and fresh["outputs"]["pid"] != frozen.pid
    check_ledger(pool, max_attempts=1)
