"""Executions whose process is killed: what they made in the temporary directory goes too.

Each test starts its own worker with a temporary directory of its own (TMPDIR), so what an
execution leaves there is seen, and ends with the pool's ledger (tests/support/ledger.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from tests.support.eventually import eventually
from tests.support.executions import deploy, pool_per_test, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.processes import cmdline, start_worker

pool, sdk = pool_per_test("leftovers")  # one pool per test: each test owns its workers


@pytest.mark.parametrize("mode", ["elastic", "low_latency"])
def test_a_killed_execution_leaves_no_temporary_directory(
    sdk: PipeDeploy, pool: str, tmp_path: Path, mode: str
) -> None:
    """Fault: SIGKILL of the process running an execution (an elastic run's, or its pod).
    Before: the execution's temporary directory (`pipedeploy-exec-*`, made for its downloaded
    inputs) was removed only by the process itself when the run ended, so every killed run
    left one behind (8 after a 35 s soak); now the worker removes it once the process is gone."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": "3"}
    worker = start_worker(pool, tmp_path, env=env)
    try:
        name = deploy(sdk, "counter", mode=mode, max_retries=0, ram_request="400MiB")
        deployment_id = sdk.get_deployment(name)["id"]
        if mode == "low_latency":
            wait_until_up(sdk, name)
        execution_id = sdk.run_deployment(
            name, {"marker": "killed", "sleep_s": 60}, wait_for_completion=False
        )["execution_id"]
        eventually(
            lambda: sdk.get_pipeline_execution(execution_id)["status"],
            60,
            until=lambda status: status == "Running",
        )
        assert [p.name for p in temp.iterdir() if p.name.startswith("pipedeploy-exec-")]
        wanted = execution_id if mode == "elastic" else deployment_id
        victims = eventually(lambda: [p for p in psutil.process_iter() if wanted in cmdline(p)], 30)
        for victim in victims:
            victim.kill()
        ended = eventually(
            lambda: sdk.get_pipeline_execution(execution_id),
            60,
            until=lambda e: e["status"] not in ("Pending", "Running"),
        )
        assert ended["status"] == "Error" and "SIGKILL" in ended["message"], ended
        left = eventually(
            lambda: [p.name for p in temp.iterdir() if p.name.startswith("pipedeploy-exec-")],
            15,
            until=lambda names: not names,
        )
        assert not left
        check_ledger(pool, max_attempts=1)
    finally:
        worker.stop()


def test_the_next_worker_removes_what_a_killed_worker_left_in_the_temporary_directory(
    sdk: PipeDeploy, pool: str, tmp_path: Path
) -> None:
    """Fault: SIGKILL of the worker while its elastic execution runs; the execution finishes
    before a worker starts again. Before: the temporary working directory the dead worker had
    made for it (`pipedeploy-run-*`) stayed forever (2 after a 35 s chaos soak): only the
    worker's own `TemporaryDirectory`, or adoption of a still running process, removed it. Now
    the next worker removes it when it starts."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": "3"}
    first = start_worker(pool, tmp_path, env=env)
    try:
        name = deploy(sdk, "counter", max_retries=0, ram_request="400MiB")
        execution_id = sdk.run_deployment(
            name, {"marker": "orphan", "sleep_s": 3}, wait_for_completion=False
        )["execution_id"]
        eventually(
            lambda: sdk.get_pipeline_execution(execution_id)["status"],
            60,
            until=lambda status: status == "Running",
        )
        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
    finally:
        first.stop()
    ended = eventually(
        lambda: sdk.get_pipeline_execution(execution_id),
        60,
        until=lambda e: e["status"] not in ("Pending", "Running"),
    )
    assert ended["status"] == "Succeeded", ended  # it reported its own end
    eventually(
        lambda: [p for p in psutil.process_iter() if execution_id in cmdline(p)],
        30,
        until=lambda left: not left,
    )
    assert [p.name for p in temp.iterdir() if p.name.startswith("pipedeploy-run-")]
    second = start_worker(pool, tmp_path, env=env)
    try:
        eventually(
            lambda: sorted(p.name for p in temp.iterdir()), 30, until=lambda names: not names
        )
        check_ledger(pool, max_attempts=1)
    finally:
        second.stop()
