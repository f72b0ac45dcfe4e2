"""The example ML pipelines (prefect_pipedeploy/examples/iris.py) as a data-science team runs them.

The SDK deploys both (`iris.deploy_examples`) to the module's pool, served by a real worker and
gateway on a local data store: the training deployment (periodic, elastic, one at a time) stores
its model under `models/iris/{date_time}/model.pkl` and reports metrics; the inference endpoint
(low latency, parallel) answers a burst of calls with the latest model, loaded once by its pod.
The repository's prefect.yaml, deployed with `prefect deploy --all` to another pool, makes the
same deployments; a wrong job variable is refused by `prefect deploy` itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import DeploymentResponse
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.examples import iris
from prefect_pipedeploy.stack import ChildProcess, wait_for_http
from tests.support.eventually import eventually
from tests.support.executions import unique, wait_until_up
from tests.support.paths import ROOT
from tests.support.processes import start_gateway

MODEL_KEY = re.compile(r"^models/iris/\d{8}_\d{6}/model\.pkl$")
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]


@pytest.fixture(scope="module")
def examples(
    data_store: str, sdk: PipeDeploy, pool: str, worker: ChildProcess, tmp_path_factory: Any
) -> Iterator[tuple[PipeDeploy, str, str]]:
    """Both examples deployed by the SDK; the SDK, the gateway's URL and the endpoint's token."""
    made = iris.deploy_examples(sdk)
    gateway, url = start_gateway("examples", [pool], tmp_path_factory.mktemp("gateway"), {})
    try:
        wait_for_http(f"{url}/health", 60, gateway)
        yield sdk, url, made[iris.INFERENCE]["endpoint_token"]
    finally:
        gateway.stop()


def train(sdk: PipeDeploy) -> dict[str, Any]:
    trained = sdk.run_deployment(iris.TRAINING, timeout_s=180)
    assert trained["status"] == "Succeeded", trained
    return trained


def model_key(sdk: PipeDeploy, trained: dict[str, Any]) -> str:
    """The data-store key a training's model was stored under."""
    stored = sdk.get_pipeline_execution_output(trained["execution_id"], "model", value_only=True)
    return str(stored["datastore_path"])


def test_training_stores_its_model_under_its_date_time_and_reports_metrics(
    examples: tuple[PipeDeploy, str, str],
) -> None:
    sdk, _, _ = examples
    trained = train(sdk)
    outputs = trained["outputs"]
    assert outputs["accuracy"] >= 0.85 and outputs["f1_macro"] >= 0.85, outputs
    assert (outputs["train_samples"], outputs["test_samples"]) == (112, 38)  # test_size 0.25
    key = model_key(sdk, trained)
    assert MODEL_KEY.match(key), key
    assert key in {o["key"] for o in sdk.list_data_store_objects(iris.MODEL_PREFIX)}
    # the model file was written in the execution's own directory, which its process removes
    # once the model is stored and the run ended
    pattern = f"pipedeploy-exec-{trained['execution_id']}-*"
    eventually(
        lambda: list(Path(tempfile.gettempdir()).glob(pattern)),
        30,
        0.5,
        until=lambda left: not left,
        what="the execution's directory removed",
    )
    deployment = sdk.get_deployment(iris.TRAINING)
    assert (deployment["execution_rule"], deployment["mode"]) == ("periodic", "elastic")
    assert deployment["schedule"] == {"type": "basic", "every": 1, "unit": "hours"}


def test_inference_answers_a_burst_with_the_latest_model_loaded_once(
    examples: tuple[PipeDeploy, str, str],
) -> None:
    sdk, url, token = examples
    latest = train(sdk)  # after the first test's: the endpoint must answer with this one
    newest = max(o["key"] for o in sdk.list_data_store_objects(iris.MODEL_PREFIX))
    assert newest == model_key(sdk, latest)
    wait_until_up(sdk, iris.INFERENCE)

    def call(_: int) -> httpx.Response:
        return httpx.post(
            f"{url}/endpoints/{iris.INFERENCE}",
            json={"samples": [SETOSA, VIRGINICA]},
            headers={"Authorization": f"EndpointToken {token}"},
            timeout=120,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    for body in bodies:
        assert body["outputs"]["predictions"] == ["setosa", "virginica"], body
        assert body["outputs"]["model"] == newest, body
    # one execution of the pod loaded the model; the others used it
    loads = [
        body["execution_id"]
        for body in bodies
        if any(
            "loaded model" in line["message"]
            for line in sdk.get_pipeline_execution_logs(body["execution_id"])
        )
    ]
    assert len(loads) == 1, loads
    assert sdk.get_deployment(iris.INFERENCE)["settings"]["max_parallel_executions_per_pod"] == 4


def test_a_bad_input_is_answered_with_the_field_and_the_fix(
    examples: tuple[PipeDeploy, str, str],
) -> None:
    sdk, url, token = examples
    wait_until_up(sdk, iris.INFERENCE)
    refused = httpx.post(
        f"{url}/endpoints/{iris.INFERENCE}",
        json={"samples": [[1.0, 2.0]]},
        headers={"Authorization": f"EndpointToken {token}"},
        timeout=120,
    )
    assert refused.status_code == 500, refused.text
    assert "each sample has 4 numbers" in refused.json()["message"], refused.json()
    assert "Traceback" not in refused.text


# ---- the same deployments from prefect.yaml ----------------------------------------------------


def prefect_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`prefect <args>` run from the checkout, as a user runs `prefect deploy` there."""
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env={**os.environ, "PWD": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
    )


def manifest(pool: str, suffix: str) -> str:
    """The repository's prefect.yaml with its pools renamed and its deployments' names suffixed."""
    text = (ROOT / "prefect.yaml").read_text()
    text = text.replace("name: pipedeploy\n", f"name: {pool}\n")
    return re.sub(r"(?m)^  - name: (\S+)$", rf"  - name: \1{suffix}", text)


def read_deployment(flow_name: str, name: str) -> DeploymentResponse:
    async def read() -> DeploymentResponse:
        async with get_client() as client:
            return await client.read_deployment_by_name(f"{flow_name}/{name}")

    return run_coro_as_sync(read())


def comparable(deployment: DeploymentResponse) -> dict[str, Any]:
    """What makes two deployments the same pipeline with the same platform settings."""
    step = (deployment.pull_steps or [{}])[0]
    # the SDK ships the folder (a data store is configured) and records where it came from in
    # `path`; `prefect deploy` works in the folder itself
    directory = next(iter(step.values())).get("directory") or deployment.path
    file, _, function = (deployment.entrypoint or "").partition(":")
    job_variables = dict(deployment.job_variables or {})
    job_variables.pop("endpoint_token_hash", None)  # prefect deploy makes no token
    return {
        "pipeline": (str((Path(directory) / file).resolve()), function),
        "job_variables": job_variables,
        "schedules": [
            (json.loads(s.schedule.model_dump_json()), s.active) for s in deployment.schedules
        ],
        "parameters": deployment.parameter_openapi_schema,
        "tags": deployment.tags,
        "paused": deployment.paused,
    }


def test_prefect_deploy_all_makes_the_same_deployments_as_the_sdk(
    examples: tuple[PipeDeploy, str, str], tmp_path: Path
) -> None:
    pool = unique("yaml-examples")
    made = prefect_cli("work-pool", "create", pool, "--type", "pipedeploy")
    assert made.returncode == 0, made.stderr
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(manifest(pool, "-yaml"))
    deployed = prefect_cli("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file))
    assert deployed.returncode == 0, f"{deployed.stdout}\n{deployed.stderr}"
    for flow_name, name in (("iris-train", iris.TRAINING), ("iris-predict", iris.INFERENCE)):
        by_sdk = comparable(read_deployment(flow_name, name))
        by_yaml = comparable(read_deployment(flow_name, f"{name}-yaml"))
        assert by_yaml == by_sdk, name


def test_a_wrong_setting_is_refused_by_prefect_deploy(prefect_api: str, tmp_path: Path) -> None:
    pool = unique("yaml-wrong")
    made = prefect_cli("work-pool", "create", pool, "--type", "pipedeploy")
    assert made.returncode == 0, made.stderr
    prefect_file = tmp_path / "prefect.yaml"
    text = manifest(pool, "-wrong")
    head, training = text.split("  - name: iris-training-wrong\n")
    wrong = (
        head
        + "  - name: iris-training-wrong\n"
        + training.replace("mode: elastic", "mode: fast", 1)
    )
    assert "mode: fast" in wrong
    prefect_file.write_text(wrong)
    refused = prefect_cli(
        "--no-prompt",
        "deploy",
        "--name",
        "iris-training-wrong",
        "--prefect-file",
        str(prefect_file),
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    # Prefect's own message (its CLI prints it after a traceback of its own)
    assert (
        "Validation failed for field 'mode'. Failure reason: 'fast' is not one of "
        "['elastic', 'low_latency']"
    ) in output, output
