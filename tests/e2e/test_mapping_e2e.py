"""Inputs and outputs mapping at run time, identical in elastic runs and low-latency pods."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_pipedeploy import InputSource, OutputDestination, PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.executions import run_many, unique, wait_until_up
from tests.support.paths import PIPELINES
from tests.support.processes import start_worker


@pytest.fixture(scope="module")
def worker(
    pool: str, data_store: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChildProcess]:
    child = start_worker(
        pool, tmp_path_factory.mktemp("worker-logs"), env={"DEMO_TOKEN": "s3cret-token"}
    )
    yield child
    child.stop()


INPUTS = [
    InputSource(pipeline_input_name="text", endpoint_input_name="text", data_type="string"),
    InputSource(pipeline_input_name="scale", constant_value=2.5),
    InputSource(pipeline_input_name="model_file", datastore_path="models/model.json"),
    InputSource(
        pipeline_input_name="token", environment_variable_name="DEMO_TOKEN", is_secret=True
    ),
    InputSource(pipeline_input_name="nothing", is_null=True),
]
OUTPUTS = [
    OutputDestination(pipeline_output_name="summary", endpoint_output_name="summary"),
    OutputDestination(
        pipeline_output_name="report", datastore_path="reports/{execution_id}/report.txt"
    ),
]


@pytest.mark.parametrize("mode", ["elastic", "low_latency"])
def test_every_source_and_destination(
    sdk: PipeDeploy, worker: ChildProcess, mode: str, tmp_path: Path
) -> None:
    sdk.upload_data_store_object(
        io.BytesIO(json.dumps({"name": "tiny-model", "bias": 2}).encode()), "models/model.json"
    )
    name = unique(f"enrich-{mode.replace('_', '-')}")
    extra = {"enable_parallel_executions": True} if mode == "low_latency" else {}
    sdk.create_deployment(
        f"{PIPELINES}:enrich",
        name,
        mode=mode,
        inputs_mapping=INPUTS,
        outputs_mapping=OUTPUTS,
        **extra,
    )
    if mode == "low_latency":
        wait_until_up(sdk, name)
        results = run_many(sdk, name, [{"text": "hello"}, {"text": "parallel"}])
    else:
        results = [sdk.run_deployment(name, {"text": "hello"}, timeout_s=90)]
    for result in results:
        text = result["parameters"]["text"]
        assert result["status"] == "Succeeded", result
        assert result["outputs"] == {
            "summary": f"{text.upper()} (12-char token, nothing=None)",
            "scaled": len(text) * 2.5 * 2,
        }
        execution_id = result["execution_id"]
        key = f"reports/{execution_id}/report.txt"
        local = tmp_path / f"{execution_id}.txt"
        sdk.download_data_store_object(key, str(local))
        assert local.read_text() == f"{text} x2.5 with tiny-model"
        assert sdk.get_pipeline_execution_input(execution_id, "token", value_only=True) == "***"
        assert sdk.get_pipeline_execution_input(execution_id, "scale", value_only=True) == 2.5
        assert sdk.get_pipeline_execution_input(execution_id, "model_file", value_only=True)[
            "datastore_path"
        ] == ("models/model.json")
        assert sdk.get_pipeline_execution_output(
            execution_id, "summary", value_only=True
        ).startswith(text.upper())


@pytest.mark.parametrize("mode", ["elastic", "low_latency"])
def test_missing_inputs_fail_before_the_pipeline_starts(
    sdk: PipeDeploy, worker: ChildProcess, mode: str
) -> None:
    name = unique("enrich-missing")
    sdk.create_deployment(
        f"{PIPELINES}:enrich",
        name,
        mode=mode,
        inputs_mapping=[
            *INPUTS[:2],
            InputSource(pipeline_input_name="model_file", datastore_path="models/absent.json"),
            *INPUTS[3:],
        ],
    )
    if mode == "low_latency":
        wait_until_up(sdk, name)
    missing_text = sdk.run_deployment(name, {}, timeout_s=90)
    assert missing_text["status"] == "Failed"
    assert "input 'text'" in missing_text["message"] and "required" in missing_text["message"]
    missing_file = sdk.run_deployment(name, {"text": "x"}, timeout_s=90)
    assert missing_file["status"] == "Failed"
    assert "models/absent.json" in missing_file["message"]
    for result in (missing_text, missing_file):
        assert result["outputs"] is None
