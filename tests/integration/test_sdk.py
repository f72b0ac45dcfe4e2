"""Every SDK verb against a real Prefect server (the worker is not needed for these)."""

from __future__ import annotations

import pytest
from prefect import flow

from prefect_pipedeploy import (
    DeploymentExists,
    DeploymentNotFound,
    ExecutionNotFound,
    InputSource,
    PipeDeploy,
    PipelineLoadError,
    SpecError,
)
from tests.support.executions import unique
from tests.support.paths import PIPELINES


@flow
def module_flow(x: int = 1) -> dict:
    return {"y": x + 1}


def plain_function(a: int, b: int = 2) -> dict:
    return {"sum": a + b}


def test_create_from_entrypoint_returns_token_once(sdk: PipeDeploy) -> None:
    name = unique("score")
    created = sdk.create_deployment(f"{PIPELINES}:score", name, description="scores")
    assert created["name"] == name
    assert created["entrypoint"] == "pipelines.py:score"
    assert created["execution_rule"] == "endpoint"
    assert created["mode"] == "elastic"
    assert created["status"] == "standby"
    assert created["endpoint_url_path"] == name
    assert created["endpoint_token"].startswith("pdt_")
    fetched = sdk.get_deployment(name)
    assert "endpoint_token" not in fetched
    assert {k: v for k, v in created.items() if k != "endpoint_token"} == fetched


def test_create_from_flow_object_and_plain_function(sdk: PipeDeploy) -> None:
    a = sdk.create_deployment(module_flow, unique("flow-object"), endpoint_token="secret-1")
    assert a["entrypoint"] == "test_sdk.py:module_flow"
    assert a["endpoint_token"] == "secret-1"
    b = sdk.create_deployment(
        plain_function,
        unique("plain"),
        mode="low_latency",
        enable_parallel_executions=True,
        max_parallel_executions_per_pod=3,
        ram_request="256MiB",
        execution_timeout_s=30,
    )
    assert b["entrypoint"] == "test_sdk.py:plain_function"
    assert b["settings"] == {
        "enable_parallel_executions": True,
        "max_parallel_executions_per_pod": 3,
        "max_retries": 1,
        "ram_request": "256MiB",
        "execution_timeout_s": 30.0,
    }


def test_several_deployments_of_one_pipeline_coexist(sdk: PipeDeploy) -> None:
    names = [unique("twin") for _ in range(3)]
    for name in names:
        sdk.create_deployment(f"{PIPELINES}:score", name)
    listed = {d["name"] for d in sdk.list_deployments()}
    assert set(names) <= listed


def test_periodic_deployment_and_schedule_update(sdk: PipeDeploy) -> None:
    name = unique("nightly")
    created = sdk.create_deployment(
        f"{PIPELINES}:score",
        name,
        execution_rule="periodic",
        schedule="0 3 * * *",
        inputs_mapping=[
            InputSource(pipeline_input_name="text", constant_value="hello"),
            {"pipeline_input_name": "repeat", "environment_variable_name": "REPEAT"},
        ],
    )
    assert created["schedule"] == {"type": "advanced", "cron": "0 3 * * *"}
    # none given: none shown (Prefect's client would store the text "None")
    assert created["description"] is None
    assert "endpoint_token" not in created
    assert created["endpoint_url_path"] is None
    updated = sdk.update_deployment(name, schedule="every 2 hours", description="two-hourly")
    assert updated["schedule"] == {"type": "basic", "every": 2, "unit": "hours"}
    assert updated["description"] == "two-hourly"
    assert sdk.update_deployment(name, description=None)["description"] is None
    assert updated["inputs_mapping"][0] == {
        "pipeline_input_name": "text",
        "constant_value": "hello",
    }


def test_update_validates_and_disables(sdk: PipeDeploy) -> None:
    name = unique("upd")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    with pytest.raises(SpecError, match="parallel executions need mode low_latency"):
        sdk.update_deployment(name, enable_parallel_executions=True)
    with pytest.raises(SpecError, match="unknown setting 'colour'"):
        sdk.update_deployment(name, colour="red")
    changed = sdk.update_deployment(name, mode="low_latency", ram_request="1GiB")
    assert changed["mode"] == "low_latency"
    assert changed["settings"]["ram_request"] == "1GiB"
    assert sdk.update_deployment(name, disabled=True)["status"] == "disabled"


def test_delete_and_not_found(sdk: PipeDeploy) -> None:
    name = unique("gone")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    sdk.delete_deployment(name)
    with pytest.raises(DeploymentNotFound, match=f"no deployment named '{name}'"):
        sdk.get_deployment(name)
    with pytest.raises(DeploymentNotFound):
        sdk.delete_deployment(name)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"ram_request": "512"}, SpecError, "ram_request"),
        ({"schedule": "every 1 minute"}, SpecError, "schedule is only for periodic"),
        (
            {"execution_rule": "periodic", "schedule": "every 1 minute"},
            SpecError,
            "must map every input",
        ),
        (
            {"inputs_mapping": [{"pipeline_input_name": "nope", "is_null": True}]},
            SpecError,
            "the pipeline has no input 'nope'",
        ),
        (
            {
                "execution_rule": "periodic",
                "schedule": "every 1 minute",
                "endpoint_token": "t",
                "inputs_mapping": [{"pipeline_input_name": "a", "constant_value": 1}],
            },
            SpecError,
            "endpoint_token is only for endpoint deployments",
        ),
    ],
)
def test_create_refuses_bad_settings(
    sdk: PipeDeploy, kwargs: dict, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        sdk.create_deployment(plain_function, unique("bad"), **kwargs)


@pytest.mark.parametrize(
    "pipeline, words",
    [
        ("tests/support/pipelines.py", "not an entrypoint"),
        ("does/not/exist.py:f", "no file at"),
        (f"{PIPELINES}:missing", "could not be imported"),
        (42, "must be a flow, a function"),
        (lambda: None, "top level of a Python file"),
    ],
)
def test_bad_pipelines(sdk: PipeDeploy, pipeline: object, words: str) -> None:
    with pytest.raises(PipelineLoadError, match=words):
        sdk.create_deployment(pipeline, unique("bad-pipeline"))


def test_reserved_pool_name_refused(prefect_api: str) -> None:
    with pytest.raises(SpecError, match="which Prefect reserves; choose another pool name"):
        PipeDeploy(work_pool_name="prefect-pool").create_deployment(plain_function, unique("x"))


def test_duplicate_name_refused(sdk: PipeDeploy) -> None:
    name = unique("dup")
    sdk.create_deployment(plain_function, name)
    with pytest.raises(DeploymentExists, match="exists already"):
        sdk.create_deployment(plain_function, name)


def test_pool_created_with_pipedeploy_template(sdk: PipeDeploy, pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    sdk.create_deployment(plain_function, unique("pool-check"))

    async def read() -> object:
        async with get_client() as client:
            return await client.read_work_pool(pool)

    work_pool = run_coro_as_sync(read())
    assert work_pool.type == "pipedeploy"
    properties = work_pool.base_job_template["variables"]["properties"]
    for field in ("mode", "execution_rule", "ram_request", "inputs_mapping", "schedule"):
        assert properties[field]["description"]
    assert properties["max_parallel_executions_per_pod"]["default"] == 6


def test_execution_not_found(sdk: PipeDeploy) -> None:
    with pytest.raises(ExecutionNotFound):
        sdk.get_pipeline_execution("00000000-0000-0000-0000-000000000000")
    with pytest.raises(ExecutionNotFound):
        sdk.get_pipeline_execution_logs("not-a-uuid")
