"""A worker killed and restarted at once, as a supervisor (systemd, Kubernetes) restarts it.

Each test starts its own workers and ends with the pool's ledger (tests/support/ledger.py).
"""

from __future__ import annotations

import signal
from pathlib import Path

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.runtimes.process import kill_process_tree
from tests.support.eventually import eventually
from tests.support.executions import deploy, pool_per_test
from tests.support.ledger import check_ledger
from tests.support.processes import start_worker

pool, sdk = pool_per_test("restart")  # one pool per test: each test owns its workers


def test_a_run_claimed_by_a_worker_killed_and_restarted_at_once_is_not_stranded(
    sdk: PipeDeploy, pool: str, tmp_path: Path
) -> None:
    """Fault: SIGKILL of the worker (and its children) while a run it claimed is Pending, and a
    new worker at once (a supervisor restarting it). Before: runs left Pending were re-queued
    only by a worker that started after they had been Pending `pending_recovery_s`; the new
    worker started too early, so the run stayed Pending for good (the soak's lost execution).
    Now every worker looks for them again every half `pending_recovery_s`."""
    env = {"PREFECT_INTEGRATIONS_PIPEDEPLOY_PENDING_RECOVERY_S": "25"}
    first = start_worker(pool, tmp_path, env=env)
    try:
        name = deploy(sdk, "counter", max_retries=0, ram_request="400MiB")
        execution_id = sdk.run_deployment(name, {"marker": "claimed"}, wait_for_completion=False)[
            "execution_id"
        ]
        eventually(
            lambda: sdk.get_pipeline_execution(execution_id)["status"],
            60,
            0.02,
            until=lambda status: status != "Scheduled",
        )
        kill_process_tree(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
    finally:
        first.stop()
    claimed = sdk.get_pipeline_execution(execution_id)
    assert claimed["status"] == "Pending", claimed  # claimed, never started
    second = start_worker(pool, tmp_path, env=env)
    try:
        ended = eventually(
            lambda: sdk.get_pipeline_execution(execution_id),
            90,
            until=lambda e: e["status"] not in ("Pending", "Running"),
        )
        assert ended["status"] == "Succeeded", ended
        check_ledger(pool, max_attempts=1)
    finally:
        second.stop()
