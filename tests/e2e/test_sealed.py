"""Secret inputs are sealed in Prefect Secret blocks: in no flow run, read back by the run, deleted
once the run is final (not before a retry has used them)."""

from __future__ import annotations

import json

import pytest
from prefect.blocks.system import Secret
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import InputSource, PipeDeploy
from prefect_pipedeploy.prefect_api.sealed import (
    BLOCK_PREFIX,
    REFERENCE_PREFIX,
    sealed_key,
)
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import unique, wait_until_up
from tests.support.paths import PIPELINES


def sealed_value(key: str) -> object | None:
    """The sealed value under `key`, or None once it is deleted."""

    async def load() -> object | None:
        try:
            block: Secret[str] = await Secret.aload(BLOCK_PREFIX + key)
        except ValueError:
            return None
        return block.get()

    return run_coro_as_sync(load())


def wait_deleted(key: str, timeout_s: float = 20) -> None:
    eventually(
        lambda: sealed_value(key),
        timeout_s,
        until=lambda value: value is None,
        what=f"sealed value {key} deleted",
    )


SECRET_LABEL = [
    InputSource(
        pipeline_input_name="label", endpoint_input_name="label", data_type="string", is_secret=True
    )
]


@pytest.mark.parametrize("mode", ["low_latency", "elastic"])
def test_a_secret_input_is_in_no_run_and_is_deleted_when_the_run_is_final(
    sdk: PipeDeploy, worker: ChildProcess, mode: str
) -> None:
    name = unique(f"sealed-{mode.replace('_', '-')}")
    sdk.create_deployment(f"{PIPELINES}:queue_step", name, mode=mode, inputs_mapping=SECRET_LABEL)
    if mode == "low_latency":
        wait_until_up(sdk, name)
    execution = sdk.run_deployment(name, {"label": "s3cr3t-value", "sleep_s": 0}, timeout_s=90)
    assert execution["status"] == "Succeeded", execution["message"]
    assert execution["outputs"]["label"] == "s3cr3t-value"  # the pipeline got the real value
    reference = execution["parameters"]["label"]
    assert reference.startswith(REFERENCE_PREFIX)
    assert "s3cr3t-value" not in json.dumps(execution["parameters"])
    assert (
        sdk.get_pipeline_execution_input(execution["execution_id"], "label", value_only=True)
        == "***"
    )
    key = sealed_key(reference)
    assert key is not None
    wait_deleted(key)
    sdk.delete_deployment(name)


def test_a_retry_reads_the_secret_again_and_then_it_is_deleted(
    sdk: PipeDeploy, worker: ChildProcess
) -> None:
    name = unique("sealed-retry")
    sdk.create_deployment(
        f"{PIPELINES}:queue_step",
        name,
        mode="low_latency",
        inputs_mapping=SECRET_LABEL,
        max_retries=1,
    )
    wait_until_up(sdk, name)
    execution = sdk.run_deployment(
        name, {"label": "again", "fail_attempts": 1, "sleep_s": 0}, timeout_s=90
    )
    assert execution["status"] == "Succeeded", execution["message"]
    assert (execution["attempts"], execution["outputs"]) == (2, {"label": "again", "attempt": 2})
    key = sealed_key(execution["parameters"]["label"])
    assert key is not None
    wait_deleted(key)
    sdk.delete_deployment(name)


def test_retries_exhausted_delete_the_secret_too(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = unique("sealed-fails")
    sdk.create_deployment(
        f"{PIPELINES}:queue_step",
        name,
        mode="elastic",
        inputs_mapping=SECRET_LABEL,
        max_retries=0,
    )
    execution = sdk.run_deployment(
        name, {"label": "gone", "fail_attempts": 5, "sleep_s": 0}, timeout_s=90
    )
    assert execution["status"] == "Failed"
    assert "gone fails on attempt 1" in execution["message"]
    key = sealed_key(execution["parameters"]["label"])
    assert key is not None
    wait_deleted(key)
    sdk.delete_deployment(name)
