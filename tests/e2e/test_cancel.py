"""Cancel, end to end: an execution cancelled (the SDK, Prefect's own CLI) ends Cancelled and
frees what it held, in every mode, with other runs in flight; the next call is served.

How each kind stops (README, "Cancel an execution"): an elastic execution's process is killed;
a pod's `async def` run has its task cancelled; a `def` run in a pod's thread, which Python cannot
stop, ends Cancelled at once with its result discarded, and either its pod is re-created (queue
mode) or its thread keeps its slot until it returns (parallel mode). A queued execution
cancelled before it starts never runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.exceptions import ExecutionAlreadyFinal, ExecutionNotFound
from prefect_pipedeploy.iomapping import EXECUTION_DIR_PREFIX
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import eventual_log_messages, unique, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.paths import PIPELINES
from tests.support.processes import cmdline, pod_processes, start_worker

POD_MIB = 128
ELASTIC_MIB = 1536  # two do not fit in the worker's capacity with the pods: RAM must be freed


@pytest.fixture(scope="module")
def worker(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    """A real worker with 2.5 GiB to hand out: the module's pods and one elastic execution."""
    child = start_worker(pool, tmp_path_factory.mktemp("worker-logs"), "--ram-capacity", "2.5GiB")
    yield child
    child.stop()


def deploy(sdk: PipeDeploy, function: str, **settings: object) -> str:
    name = unique(function.replace("_", "-"))
    sdk.create_deployment(f"{PIPELINES}:{function}", name, max_retries=0, **settings)
    return name


def low_latency(sdk: PipeDeploy, function: str, **settings: object) -> str:
    name = deploy(sdk, function, mode="low_latency", ram_request=f"{POD_MIB}MiB", **settings)
    wait_until_up(sdk, name)
    return name


def start(sdk: PipeDeploy, name: str, inputs: dict) -> str:
    return sdk.run_deployment(name, inputs, wait_for_completion=False)["execution_id"]


def status_of(sdk: PipeDeploy, execution_id: str) -> dict:
    return sdk.get_pipeline_execution(execution_id)


def running(sdk: PipeDeploy, execution_id: str) -> dict:
    return eventually(
        lambda: status_of(sdk, execution_id),
        60,
        until=lambda e: e["status"] == "Running",
        what=f"execution {execution_id} running",
    )


def final(sdk: PipeDeploy, execution_id: str, timeout_s: float = 60) -> dict:
    return eventually(
        lambda: status_of(sdk, execution_id),
        timeout_s,
        until=lambda e: e["status"] not in ("Pending", "Running"),
        what=f"execution {execution_id} final",
    )


def assert_cancelled(execution: dict) -> None:
    assert (execution["status"], execution["state_name"]) == ("Failed", "Cancelled"), execution
    assert execution["message"].startswith("Cancelled on request"), execution
    assert not execution["outputs"], execution  # a result that came after is discarded


def test_an_elastic_execution_cancelled_has_its_process_killed_and_its_ram_freed(
    sdk: PipeDeploy, worker: ChildProcess, pool: str
) -> None:
    """Cancelled through Prefect's own CLI (what the UI's Cancel does too: a Cancelling
    state). The next execution needs the RAM the cancelled one held: it runs only if it was
    freed."""
    name = deploy(sdk, "hog", ram_request=f"{ELASTIC_MIB}MiB")
    held = start(sdk, name, {"mib": 16, "hold_s": 300})
    running(sdk, held)
    process = eventually(
        lambda: [p for p in psutil.process_iter() if held in cmdline(p)], 30, what="its process"
    )[0]
    cancel = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "flow-run", "cancel", held],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert_cancelled(final(sdk, held, 30))
    process.wait(15)  # raises if it is still there
    assert not process.is_running()
    after = sdk.run_deployment(name, {"mib": 16, "hold_s": 0}, timeout_s=120)
    assert after["status"] == "Succeeded", after
    check_ledger(pool, max_attempts=1)


def test_an_async_run_cancelled_in_its_pod_stops_while_another_runs_on(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    """Parallel mode: the cancelled run's task is cancelled, the pod stays (same process) and
    the run beside it finishes; the next call is served by the same pod."""
    name = low_latency(sdk, "async_sleeper", enable_parallel_executions=True)
    pods_before = {p.pid for p in pod_processes(worker)}
    victim = start(sdk, name, {"marker": "victim", "sleep_s": 300})
    beside = start(sdk, name, {"marker": "beside", "sleep_s": 6})
    running(sdk, victim)
    ended = sdk.cancel_pipeline_execution(victim, timeout_s=30)
    assert_cancelled(ended)
    assert status_of(sdk, beside)["status"] in ("Running", "Succeeded")
    assert final(sdk, beside)["status"] == "Succeeded"
    after = sdk.run_deployment(name, {"marker": "after", "sleep_s": 0}, timeout_s=60)
    assert after["status"] == "Succeeded" and after["outputs"]["pid"] in pods_before, after
    assert "marker=victim" in eventual_log_messages(sdk, victim)  # its logs until the cancel


def test_a_sync_run_cancelled_in_queue_mode_gets_its_pod_recreated(
    sdk: PipeDeploy, worker: ChildProcess, tmp_path: Path
) -> None:
    """Queue mode: a `def` run's thread cannot be stopped, so the pod it runs in is re-created;
    the run ends Cancelled (its result discarded), a run queued behind it and cancelled before it
    started never runs, and the next call is served by the new pod."""
    name = low_latency(sdk, "counter")
    (old_pod,) = pod_processes_of(worker, sdk, name)
    gate = tmp_path / "never"  # the victim would wait two minutes
    victim = start(sdk, name, {"marker": "victim", "gate": str(gate)})
    running(sdk, victim)
    queued = start(sdk, name, {"marker": "queued"})
    assert status_of(sdk, queued)["status"] == "Pending"  # behind the victim
    skipped = sdk.cancel_pipeline_execution(queued, timeout_s=30)
    assert (skipped["state_name"], skipped["attempts"]) == ("Cancelled", 0), skipped
    assert skipped["message"] == "Cancelled on request before it started", skipped
    assert_cancelled(sdk.cancel_pipeline_execution(victim, timeout_s=30))
    eventually(lambda: old_pod.is_running(), 30, until=lambda alive: not alive, what="old pod gone")
    # its temporary directory goes with it (before: left behind by the pod's quick exit)
    assert not list(Path(tempfile.gettempdir()).glob(f"{EXECUTION_DIR_PREFIX}{victim}-*"))
    wait_until_up(sdk, name, timeout_s=60)
    after = sdk.run_deployment(name, {"marker": "after"}, timeout_s=60)
    assert after["status"] == "Succeeded", after
    assert after["outputs"]["count"] == 1 and after["outputs"]["pid"] != old_pod.pid  # a new pod
    assert "marker=queued" not in " ".join(eventual_log_messages(sdk, after["execution_id"]))
    assert status_of(sdk, queued)["attempts"] == 0  # it never ran


def test_a_sync_run_cancelled_in_parallel_mode_keeps_its_slot_until_its_thread_returns(
    sdk: PipeDeploy, worker: ChildProcess, tmp_path: Path
) -> None:
    """Parallel mode (two at a time): the cancelled run ends Cancelled at once, its thread runs
    on in the pod and holds its slot, so of two more runs one waits until the thread returns;
    what the thread returns is discarded."""
    name = low_latency(
        sdk, "counter", enable_parallel_executions=True, max_parallel_executions_per_pod=2
    )
    gates = {key: tmp_path / key for key in ("victim", "beside")}
    victim = start(sdk, name, {"marker": "victim", "gate": str(gates["victim"])})
    running(sdk, victim)
    assert_cancelled(sdk.cancel_pipeline_execution(victim, timeout_s=30))
    beside = start(sdk, name, {"marker": "beside", "gate": str(gates["beside"])})
    running(sdk, beside)
    waiting = start(sdk, name, {"marker": "waiting"})
    # the victim's thread still holds one of the two slots: the third run waits (a free slot
    # is taken within a second: the worker is woken by the run's creation)
    held = []
    for _ in range(3):
        time.sleep(1)
        held.append(status_of(sdk, waiting)["status"])
    assert held == ["Pending"] * 3, held
    gates["victim"].touch()  # the thread returns: its slot frees, its result is discarded
    assert final(sdk, waiting)["status"] == "Succeeded"
    assert_cancelled(status_of(sdk, victim))
    gates["beside"].touch()
    assert final(sdk, beside)["status"] == "Succeeded"


def test_cancelling_what_has_ended_or_does_not_exist_says_so(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = deploy(sdk, "score", ram_request="64MiB")
    done = sdk.run_deployment(name, {}, timeout_s=120)
    with pytest.raises(ExecutionAlreadyFinal, match=f"{done['execution_id']} has already ended"):
        sdk.cancel_pipeline_execution(done["execution_id"])
    with pytest.raises(ExecutionNotFound):
        sdk.cancel_pipeline_execution("00000000-0000-0000-0000-000000000000")


def pod_processes_of(worker: ChildProcess, sdk: PipeDeploy, name: str) -> list[psutil.Process]:
    deployment_id = sdk.get_deployment(name)["id"]
    return [p for p in pod_processes(worker) if deployment_id in cmdline(p)]
