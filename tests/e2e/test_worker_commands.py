"""The worker as an operator runs it: its health check, a single pass, and what a stop leaves.

Real processes: `pipedeploy worker` and `prefect worker start --type pipedeploy`, each started
as a user would, against the session's Prefect server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.examples import demo
from prefect_pipedeploy.stack import ChildProcess, free_port, start_child
from tests.support.eventually import eventually
from tests.support.executions import unique

DEMO = demo.__file__


def healthy(url: str) -> bool:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json() == {"message": "OK"}


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def children() -> Iterator[list[ChildProcess]]:
    started: list[ChildProcess] = []
    yield started
    for child in started:
        child.stop()


@pytest.mark.parametrize("command", ["pipedeploy", "prefect"])
def test_the_health_check_answers_while_the_worker_polls(
    prefect_api: str, command: str, logs: Path, children: list[ChildProcess]
) -> None:
    port = free_port()
    pool = unique("health")
    PipeDeploy(work_pool_name=pool).create_deployment(f"{DEMO}:score", unique("h"))
    if command == "pipedeploy":
        args = [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", pool]
        args += ["--with-healthcheck", "--healthcheck-port", str(port)]
        env = dict(os.environ)
    else:
        args = [sys.executable, "-m", "prefect", "worker", "start", "--type", "pipedeploy"]
        args += ["--pool", pool, "--with-healthcheck"]
        env = {**os.environ, "PREFECT_WORKER_WEBSERVER_PORT": str(port)}
    worker = start_child(f"worker-{command}", args, logs / "worker.log", env=env)
    children.append(worker)
    eventually(lambda: healthy(f"http://127.0.0.1:{port}/health"), 60, what="a healthy answer")
    assert worker.alive(), worker.log_tail()


def test_run_once_starts_the_pods_runs_what_is_ready_and_stops(
    prefect_api: str, logs: Path
) -> None:
    pool = unique("once")
    sdk = PipeDeploy(work_pool_name=pool)
    low_latency, elastic = unique("ll"), unique("el")
    sdk.create_deployment(f"{DEMO}:counter", low_latency, mode="low_latency")
    sdk.create_deployment(f"{DEMO}:score", elastic)
    runs = [
        sdk.run_deployment(low_latency, {"marker": "once"}, wait_for_completion=False),
        sdk.run_deployment(elastic, {"text": "one pass"}, wait_for_completion=False),
    ]
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--type", "pipedeploy"]
        + ["--pool", pool, "--run-once"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME": str(logs / "home")},
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    ended = [sdk.get_pipeline_execution(run["execution_id"]) for run in runs]
    assert [e["status"] for e in ended] == ["Succeeded", "Succeeded"], ended
    assert ended[0]["outputs"]["count"] >= 1 and ended[1]["outputs"]["words"] == 2
    deployment_id = sdk.get_deployment(low_latency)["id"]
    left = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if deployment_id in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []  # the pod stopped with the worker


def test_a_stopped_worker_leaves_its_pods_down_not_pending(
    prefect_api: str, logs: Path, children: list[ChildProcess]
) -> None:
    pool = unique("stop")
    sdk = PipeDeploy(work_pool_name=pool)
    deployment = unique("ll")
    sdk.create_deployment(f"{DEMO}:counter", deployment, mode="low_latency")
    worker = start_child(
        "worker",
        [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", pool],
        logs / "worker.log",
    )
    children.append(worker)
    eventually(lambda: sdk.get_deployment(deployment), 90, until=lambda d: d["status"] == "up")
    assert worker.stop() == 0, worker.log_tail()
    shown = sdk.get_deployment(deployment)
    assert shown["status"] == "down", shown
    assert shown["status_message"] == "stopped: its worker stopped"
    assert [p["status"] for p in shown["pods"]] == ["down"]
