"""Our SDK called the reference platform's way where a worker is needed: waiting until a pod
is `up` (or fails), and a real run's logs window, inputs, outputs, results and deletion.
The rest of the platform's way is tests/integration/test_sdk_platform_way.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from prefect_pipedeploy import (
    DeploymentCreationFailed,
    ExecutionNotFound,
    PipeDeploy,
)
from prefect_pipedeploy.stack import ChildProcess
from tests.support.executions import eventual_log_messages, unique
from tests.support.paths import PIPELINES


def test_wait_until_up_then_a_run_the_platforms_way(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = unique("platform-pod")
    # pipeline, name, execution_rule, mode, ..., wait_for_completion, timeout_s
    created = sdk.create_deployment(
        f"{PIPELINES}:counter",
        name,
        "endpoint",
        "low_latency",
        wait_for_completion=True,
        timeout_s=90,
    )
    assert created["status"] == "up"
    assert created["last_execution_id"] is None
    assert len(sdk.get_deployment_logs(name, limit=1)) <= 1
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert sdk.get_deployment_logs(name, from_datetime=future) == []

    execution = sdk.run_deployment(name, {"marker": "platform"}, timeout_s=90)
    execution_id = execution["execution_id"]
    assert execution["status"] == "Succeeded"
    assert sdk.get_deployment(name, True, 10)["last_execution_id"] == execution_id
    fetched = sdk.get_pipeline_execution(execution_id)
    assert fetched["pipeline_name"] == "counter"
    assert fetched["end_date"] == fetched["end_time"] and fetched["end_date"] is not None
    assert fetched["created_at"] == fetched["created"]

    assert "marker=platform" in eventual_log_messages(sdk, execution_id)
    everything = sdk.get_pipeline_execution_logs(execution_id)
    assert len(sdk.get_pipeline_execution_logs(execution_id, limit=2)) == 2
    first = datetime.fromisoformat(everything[0]["timestamp"])
    last = datetime.fromisoformat(everything[-1]["timestamp"])
    assert sdk.get_pipeline_execution_logs(execution_id, to_datetime=first) == [
        line for line in everything if datetime.fromisoformat(line["timestamp"]) <= first
    ]
    assert (
        sdk.get_pipeline_execution_logs(execution_id, from_datetime=last + timedelta(seconds=1))
        == []
    )

    # an unmapped input of an endpoint deployment is its endpoint input of the same name
    assert sdk.get_pipeline_execution_input(execution_id, "marker") == {
        "pipeline_input_name": "marker",
        "data_type": "string",
        "endpoint_input_name": "marker",
        "source": "endpoint",
        "value": "platform",
    }
    count = sdk.get_pipeline_execution_output(execution_id, "count")
    assert count["pipeline_output_name"] == "count" and count["destination"] == "endpoint"
    assert count["value"] == execution["outputs"]["count"]
    assert sdk.retrieve_pipeline_execution_outputs(execution_id) == {
        "execution_id": execution_id,
        "outputs": execution["outputs"],
    }

    assert sdk.delete_pipeline_execution(execution_id) == {"execution_id": execution_id}
    with pytest.raises(ExecutionNotFound):
        sdk.get_pipeline_execution(execution_id)
    assert sdk.get_deployment(name)["last_execution_id"] is None
    assert sdk.delete_deployment(name) == {"name": name, "execution_rule": "endpoint"}


def test_waiting_on_a_pod_that_fails_to_start_says_why(
    sdk: PipeDeploy, worker: ChildProcess, tmp_path: Path
) -> None:
    source = tmp_path / "broken_pipeline.py"
    source.write_text("def model(x: int = 1) -> dict:\n    return {'x': x}\n")
    name = unique("platform-broken")
    sdk.create_deployment(f"{source}:model", name, mode="low_latency")
    source.write_text(
        "import not_a_module_anywhere\n\ndef model(x: int = 1) -> dict:\n    return {}\n"
    )
    with pytest.raises(DeploymentCreationFailed) as caught:
        sdk.get_deployment(name, wait_for_completion=True, timeout_s=90)
    assert "not_a_module_anywhere" in str(caught.value)
    assert "get_deployment_logs" in str(caught.value)
    sdk.delete_deployment(name)
