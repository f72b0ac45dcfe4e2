"""Prefect-native use: the repository's prefect.yaml deployed with `prefect deploy`, as a user would.

The repository's prefect.yaml, its pool renamed, is copied to a fresh directory; `prefect
work-pool create --type pipedeploy` and `prefect --no-prompt deploy --name ... --prefect-file
<the copy>` (the demo's two deployments) run as subprocesses in the checkout (its entrypoints
are paths there: the packaged demo, prefect_pipedeploy/examples/demo.py); then a pipedeploy worker and gateway serve the
deployments: the SDK reads them, the low-latency pod comes up, both run, and the endpoint
answers once its token is made with `pipedeploy endpoint token` (a deployment made by `prefect
deploy` has none yet).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess, wait_for_http
from tests.support.executions import unique, wait_until_up
from tests.support.paths import ROOT
from tests.support.processes import start_gateway, start_worker

ELASTIC = "demo-score-yaml"
LOW_LATENCY = "demo-counter-low-latency"


def run(args: list[str], cwd: Path) -> str:
    # $PWD is what prefect.yaml's pull step `{{ $PWD }}` reads: the directory it runs in
    env = {**os.environ, "PWD": str(cwd)}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def project(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The project deployed with Prefect's own CLI to a fresh pipedeploy pool."""
    directory = tmp_path_factory.mktemp("project")
    pool = unique("yaml-pool")
    manifest = (ROOT / "prefect.yaml").read_text()
    assert manifest.count("name: pipedeploy\n") == 4, "prefect.yaml's pools changed"
    prefect_file = directory / "prefect.yaml"
    prefect_file.write_text(manifest.replace("name: pipedeploy\n", f"name: {pool}\n"))
    prefect = [sys.executable, "-m", "prefect"]
    run([*prefect, "work-pool", "create", pool, "--type", "pipedeploy"], ROOT)
    # the demo's two (tests/e2e/test_examples.py deploys `--all`, the examples' too)
    names = [arg for name in (ELASTIC, LOW_LATENCY) for arg in ("--name", name)]
    deployed = run(
        [*prefect, "--no-prompt", "deploy", *names, "--prefect-file", str(prefect_file)], ROOT
    )
    assert f"score/{ELASTIC}" in deployed
    assert f"counter/{LOW_LATENCY}" in deployed
    return directory, pool


@pytest.fixture(scope="module")
def served(
    project: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PipeDeploy, str]]:
    _, pool = project
    logs = tmp_path_factory.mktemp("native-logs")
    gateway, url = start_gateway("native", [pool], logs, {})
    worker: ChildProcess | None = None
    try:
        worker = start_worker(pool, logs)
        wait_for_http(f"{url}/health", 60, gateway)
        yield PipeDeploy(work_pool_name=pool, gateway_url=url), url
    finally:
        for child in (worker, gateway):
            if child is not None:
                child.stop()


def test_the_sdk_sees_what_prefect_deploy_made(served: tuple[PipeDeploy, str]) -> None:
    sdk, _ = served
    elastic = sdk.get_deployment(ELASTIC)
    assert (elastic["mode"], elastic["execution_rule"]) == ("elastic", "endpoint")
    assert elastic["settings"]["ram_request"] == "256MiB"
    assert elastic["endpoint_url_path"] == ELASTIC
    low_latency = wait_until_up(sdk, LOW_LATENCY)
    assert low_latency["settings"]["ram_request"] == "512MiB"
    assert {ELASTIC, LOW_LATENCY} <= {d["name"] for d in sdk.list_deployments()}


def test_both_deployments_run(served: tuple[PipeDeploy, str]) -> None:
    sdk, _ = served
    scored = sdk.run_deployment(ELASTIC, {"text": "from prefect deploy"}, timeout_s=90)
    assert scored["status"] == "Succeeded", scored
    assert scored["outputs"]["words"] == 3
    wait_until_up(sdk, LOW_LATENCY)
    counted = [sdk.run_deployment(LOW_LATENCY, {"marker": "n"}, timeout_s=60) for _ in range(2)]
    assert [c["status"] for c in counted] == ["Succeeded", "Succeeded"]
    first, second = (c["outputs"] for c in counted)
    assert second["count"] == first["count"] + 1  # the same warm pod: module state kept
    assert second["pid"] == first["pid"]


def test_the_endpoint_needs_a_token_made_with_the_cli(served: tuple[PipeDeploy, str]) -> None:
    sdk, url = served
    body = {"text": "hello endpoint"}
    refused = httpx.post(f"{url}/endpoints/{ELASTIC}", json=body, timeout=60)
    assert refused.status_code == 401
    assert "has no token yet" in refused.json()["message"]
    assert "pipedeploy endpoint token" in refused.json()["message"]
    wrong = httpx.post(
        f"{url}/endpoints/{ELASTIC}", json=body, headers={"Authorization": "EndpointToken x"}
    )
    assert (wrong.status_code, wrong.json()["message"]) == (401, refused.json()["message"])
    token = run(
        [sys.executable, "-m", "prefect_pipedeploy.cli", "endpoint", "token", ELASTIC], ROOT
    ).strip()
    answered = httpx.post(
        f"{url}/endpoints/{ELASTIC}",
        json=body,
        headers={"Authorization": f"EndpointToken {token}"},
        timeout=90,
        follow_redirects=True,
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["outputs"]["words"] == 2
    assert sdk.trigger_endpoint(ELASTIC, token, body)["outputs"]["words"] == 2
