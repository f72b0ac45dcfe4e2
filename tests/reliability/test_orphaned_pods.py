"""Pods orphaned by a killed worker, killed in turn while they still run an execution.

A worker killed outright leaves its pods running: each finishes the executions it holds, then
exits (a later worker adopts it meanwhile). These tests kill such a pod before it is done, the
fault the chaos soak found (tests/reliability/test_chaos_soak.py), and end with the pool's
ledger (tests/support/ledger.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.runtimes.process import orphaned_runtime_processes
from tests.support.eventually import eventually
from tests.support.executions import deploy, pool_per_test, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.processes import start_worker

ENV = {"PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": "3"}


pool, sdk = pool_per_test("orphans")  # one pool per test: each test owns its workers


def orphaned_pod(deployment_id: str) -> int:
    """The pid of the orphaned pod of a deployment."""
    found = eventually(
        lambda: [
            pid
            for pid, kind, ident in orphaned_runtime_processes()
            if kind == "pod" and ident == deployment_id
        ],
        15,
        what="the orphaned pod",
    )
    return found[0]


@pytest.mark.parametrize("when", ["before the next worker starts", "once the next adopted it"])
def test_a_killed_orphaned_pod_ends_its_execution_crashed(
    sdk: PipeDeploy, pool: str, tmp_path: Path, when: str
) -> None:
    """Fault: SIGKILL the worker while its queue-mode pod runs an execution, then SIGKILL that
    orphaned pod (before the next worker starts, or once the next worker adopted it).

    Before: nobody ended the execution: it stayed Running for good, and since a queue-mode
    deployment counts its active runs in the API, every later execution of the deployment
    stayed Scheduled ("Late"): 20 of 118 executions lost in a 300 s chaos soak (seed 7). Now
    the orphaned pod notes the executions it still holds; the worker that finds it dead ends
    them Crashed with the reason (or re-queues those it never began), and the queue moves on.
    """
    first = start_worker(pool, tmp_path, env=ENV)
    second = None
    try:
        name = deploy(sdk, "counter", mode="low_latency", max_retries=0)
        wait_until_up(sdk, name)
        deployment_id = sdk.get_deployment(name)["id"]
        held = sdk.run_deployment(
            name, {"marker": "held", "sleep_s": 120}, wait_for_completion=False
        )["execution_id"]
        eventually(
            lambda: sdk.get_pipeline_execution(held)["status"], 60, until=lambda s: s == "Running"
        )
        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
        pod = psutil.Process(orphaned_pod(deployment_id))
        if when == "before the next worker starts":
            pod.kill()
            pod.wait(10)
        second = start_worker(pool, tmp_path, env=ENV)
        if when == "once the next adopted it":
            eventually(lambda: "Adopted the pod" in second.log_path.read_text(errors="replace"), 60)
            pod.kill()
            pod.wait(10)
        ended = eventually(
            lambda: sdk.get_pipeline_execution(held),
            30,
            until=lambda e: e["status"] not in ("Pending", "Running"),
        )
        assert ended["status"] == "Error", ended
        assert "worker that started it died" in ended["message"], ended
        after = sdk.run_deployment(name, {"marker": "after"}, timeout_s=90)
        assert after["status"] == "Succeeded", after
        check_ledger(pool, max_attempts=1)
    finally:
        first.stop()
        if second is not None:
            second.stop()
