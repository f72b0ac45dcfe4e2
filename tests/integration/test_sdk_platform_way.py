"""Our SDK called the reference platform's way (`craft-ai-sdk`'s signatures, keywords and
return keys), against a real Prefect server. What needs a worker (a pod that comes `up`, a
real run's logs, inputs and outputs) is tests/e2e/test_sdk_platform_way.py; the pure pieces
are tests/unit/test_sdk_compat.py.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter, FlowRunFilterId
from prefect.states import Running

from prefect_pipedeploy import (
    DeploymentNotFound,
    DeploymentNotReady,
    ExecutionNotFound,
    ExecutionStillRunning,
    InputSource,
    OutputDestination,
    PipeDeploy,
    SpecError,
)
from prefect_pipedeploy.datastore.configured import DATA_STORE_VARIABLE, ensure_local_data_store
from prefect_pipedeploy.prefect_api.records import record_inputs, record_outputs
from prefect_pipedeploy.tokens import hash_token
from tests.support.executions import unique
from tests.support.paths import PIPELINES

#: The keys the platform's client reads from a deployment (craft_ai_sdk/core/deployments.py).
PLATFORM_DEPLOYMENT_KEYS = {
    "name",
    "mode",
    "pipeline",
    "inputs_mapping",
    "outputs_mapping",
    "created_at",
    "updated_at",
    "last_execution_id",
    "is_enabled",
    "description",
    "status",
    "execution_rule",
    "enable_parallel_executions",
    "max_parallel_executions_per_pod",
}

#: ... and from an execution (craft_ai_sdk/core/pipeline_executions.py).
PLATFORM_EXECUTION_KEYS = {
    "execution_id",
    "status",
    "created_at",
    "end_date",
    "pipeline_name",
    "deployment_name",
    "inputs",
    "steps",
}


async def _deployment_id(name: str) -> uuid.UUID:
    async with get_client() as client:
        return (await client.read_deployment_by_name(f"score/{name}")).id


async def _new_run(name: str) -> uuid.UUID:
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"score/{name}")
        return (await client.create_flow_run_from_deployment(deployment.id)).id


# -- deployments ---------------------------------------------------------------------------------


def test_create_positionally_in_the_platforms_order_and_its_keys(sdk: PipeDeploy) -> None:
    name = unique("platform")
    # pipeline, name, execution_rule, mode, schedule, endpoint_url_path, inputs_mapping,
    # outputs_mapping, description, enable_parallel_executions, max_parallel_executions_per_pod,
    # ram_request, gpu_request, wait_for_completion, timeout_s, execution_timeout_s,
    # endpoint_token: the platform's create_deployment, positionally
    created = sdk.create_deployment(
        f"{PIPELINES}:score",
        name,
        "endpoint",
        "elastic",
        None,
        f"{name}-path",
        None,
        None,
        "the platform's way",
        None,
        None,
        None,
        None,
        True,
        10,
        30,
        "chosen-token-0123456789",
    )
    assert PLATFORM_DEPLOYMENT_KEYS <= set(created)
    assert created["endpoint_token"] == "chosen-token-0123456789"
    assert created["endpoint_url_path"] == f"{name}-path"
    assert created["description"] == "the platform's way"
    assert created["settings"]["execution_timeout_s"] == 30
    assert created["pipeline"] == created["entrypoint"]  # ours stays: a string
    assert created["pipeline_name"] == "score"
    assert created["entrypoint"] == "pipelines.py:score"
    assert created["status"] == "standby"  # elastic: ready at once
    assert created["is_enabled"] is True
    assert created["last_execution_id"] is None
    assert created["created_at"] == created["created"]
    assert created["updated_at"] == created["updated"]
    assert created["human_readable_schedule"] is None
    assert created["enable_parallel_executions"] is False
    assert created["max_parallel_executions_per_pod"] == 6

    fetched = sdk.get_deployment(name, True, 5)  # deployment_name, wait_for_completion, timeout_s
    assert fetched["status"] == "standby"
    assert sdk.get_deployment(deployment_name=name, wait_for_completion=False)["name"] == name

    run_id = anyio.run(_new_run, name)
    assert sdk.get_deployment(name)["last_execution_id"] == str(run_id)
    listed = {d["name"]: d for d in sdk.list_deployments()}[name]
    assert {"name", "pipeline_name", "execution_rule", "mode", "is_enabled", "created_at"} <= set(
        listed
    )

    assert sdk.delete_deployment(name) == {"name": name, "execution_rule": "endpoint"}
    with pytest.raises(DeploymentNotFound):
        sdk.get_deployment(name)


def test_create_with_pipeline_name_and_a_periodic_schedule(sdk: PipeDeploy) -> None:
    name = unique("periodic")
    created = sdk.create_deployment(
        pipeline_name=f"{PIPELINES}:score",
        deployment_name=name,
        execution_rule="periodic",
        schedule="0 0 * * *",
        inputs_mapping=[InputSource(pipeline_input_name="text", constant_value="nightly")],
        wait_for_completion=True,
        timeout_s=5,
    )
    assert created["human_readable_schedule"] == "every day at 00:00 UTC"
    assert created["schedule"] == {"type": "advanced", "cron": "0 0 * * *"}
    # update_deployment(deployment_name, is_enabled, inputs_mapping, outputs_mapping, schedule)
    updated = sdk.update_deployment(name, None, None, None, "30 8 * * 1")
    assert updated["human_readable_schedule"] == "every Monday at 08:30 UTC"
    assert updated["inputs_mapping"] == [
        {"pipeline_input_name": "text", "constant_value": "nightly"}
    ]
    disabled = sdk.update_deployment(name, is_enabled=False)
    assert (disabled["is_enabled"], disabled["status"]) == (False, "disabled")
    # a disabled deployment is what a wait ends on: nothing comes up until it is enabled
    assert sdk.get_deployment(name, wait_for_completion=True, timeout_s=1)["status"] == "disabled"
    enabled = sdk.update_deployment(name, is_enabled=True, wait_for_completion=True, timeout_s=5)
    assert (enabled["is_enabled"], enabled["status"]) == (True, "standby")
    with pytest.raises(SpecError, match="disagree"):
        sdk.update_deployment(name, is_enabled=True, disabled=True)
    sdk.delete_deployment(name)


def test_a_low_latency_deployment_without_a_worker_times_out_clearly(sdk: PipeDeploy) -> None:
    name = unique("no-worker")
    created = sdk.create_deployment(f"{PIPELINES}:score", name, "endpoint", "low_latency")
    assert created["status"] == "creation_pending"  # ours does not wait unless asked
    with pytest.raises(DeploymentNotReady) as caught:
        sdk.get_deployment(name, wait_for_completion=True, timeout_s=1)
    message = str(caught.value)
    assert repr(name) in message and "creation_pending" in message and "1 s" in message
    assert "worker" in message
    with pytest.raises(DeploymentNotReady):
        sdk.update_deployment(name, description="x", wait_for_completion=True, timeout_s=0.5)
    sdk.delete_deployment(name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpu_request": 1}, "gpu_request"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"pipeline_name": "other.py:f"}, "give the pipeline once"),
    ],
)
def test_platform_keywords_we_refuse_say_why(
    sdk: PipeDeploy, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        sdk.create_deployment(f"{PIPELINES}:score", unique("refused"), **kwargs)


def test_generate_new_endpoint_token_with_a_chosen_token(sdk: PipeDeploy) -> None:
    name = unique("token")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    rotated = sdk.generate_new_endpoint_token(name, endpoint_token="my-own-token-42")
    assert rotated["endpoint_token"] == "my-own-token-42"
    rotated = sdk.generate_new_endpoint_token(endpoint_name=name, endpoint_token="another-one-43")
    assert rotated["endpoint_token"] == "another-one-43"

    async def stored_hash() -> str:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"score/{name}")
            return str(deployment.job_variables["endpoint_token_hash"])

    assert anyio.run(stored_hash) == hash_token("another-one-43")
    with pytest.raises(SpecError, match="endpoint_token"):
        sdk.generate_new_endpoint_token(name, endpoint_token=" ")
    assert sdk.generate_new_endpoint_token(name)["endpoint_token"].startswith("pdt_")
    sdk.delete_deployment(name)


def test_deployment_logs_take_the_platforms_window(sdk: PipeDeploy) -> None:
    name = unique("logs")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    now = datetime.now(timezone.utc)
    # an elastic deployment has no pod output: the window is empty either way
    assert sdk.get_deployment_logs(name, now - timedelta(hours=1), now, 10) == []
    assert sdk.get_deployment_logs(name, from_datetime=now, limit=5) == []
    sdk.delete_deployment(name)


# -- executions ----------------------------------------------------------------------------------


def test_execution_keys_logs_window_and_delete(sdk: PipeDeploy) -> None:
    name = unique("exec")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    run_id = anyio.run(_new_run, name)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)

    async def write_logs() -> None:
        async with get_client() as client:
            await client.create_logs(
                [
                    LogCreate(
                        name="test",
                        level=20,
                        message=f"line {i}",
                        timestamp=t0 + timedelta(seconds=i),
                        flow_run_id=run_id,
                    )
                    for i in range(5)
                ]
            )
            await record_inputs(client, run_id, {"text": "hi"})

    anyio.run(write_logs)
    execution = sdk.get_pipeline_execution(run_id)
    assert PLATFORM_EXECUTION_KEYS <= set(execution)
    assert (execution["pipeline_name"], execution["deployment_name"]) == ("score", name)
    assert execution["end_date"] is None
    # the platform's lists: each input with where it came from, and the one step it ran
    assert execution["inputs"] == [
        {
            "pipeline_input_name": "text",
            "data_type": "string",
            "endpoint_input_name": "text",
            "source": "endpoint",
            "value": "hi",
        }
    ]
    assert [(s["name"], s["status"], s["end_date"]) for s in execution["steps"]] == [
        ("score", execution["status"], None)
    ]
    listed = {e["execution_id"]: e for e in sdk.list_pipeline_executions(name)}[str(run_id)]
    assert listed["pipeline_name"] == "score"
    # by pipeline, the platform's way: every deployment of `score` (others' too), not `fails`
    by_pipeline = sdk.list_pipeline_executions(pipeline_name="score", limit=500)
    assert str(run_id) in {e["execution_id"] for e in by_pipeline}
    assert {e["pipeline_name"] for e in by_pipeline} == {"score"}
    assert sdk.list_pipeline_executions(pipeline_name="no-such-pipeline") == []
    with pytest.raises(SpecError, match="not both"):
        sdk.list_pipeline_executions(name, pipeline_name="score")

    def messages(*args: Any, **kwargs: Any) -> list[str]:
        return [line["message"] for line in sdk.get_pipeline_execution_logs(*args, **kwargs)]

    assert messages(run_id) == [f"line {i}" for i in range(5)]
    assert messages(run_id, None, None, 2) == ["line 0", "line 1"]
    assert messages(run_id, from_datetime=t0 + timedelta(seconds=3)) == ["line 3", "line 4"]
    assert messages(run_id, to_datetime=(t0 + timedelta(seconds=1)).replace(tzinfo=None)) == [
        "line 0",
        "line 1",
    ]
    assert messages(
        execution_id=run_id,
        from_datetime=t0 + timedelta(seconds=1),
        to_datetime=t0 + timedelta(seconds=3),
        limit=2,
    ) == ["line 1", "line 2"]

    async def set_running() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Running(), force=True)

    anyio.run(set_running)
    with pytest.raises(ExecutionStillRunning, match="cancel"):
        sdk.delete_pipeline_execution(run_id)

    other = anyio.run(_new_run, name)  # scheduled, not started: it can go
    anyio.run(record_inputs_on, other)
    assert sdk.delete_pipeline_execution(str(other)) == {"execution_id": str(other)}
    with pytest.raises(ExecutionNotFound):
        sdk.get_pipeline_execution(other)
    assert anyio.run(artifacts_of, other) == []
    sdk.delete_deployment(name)


async def record_inputs_on(run_id: uuid.UUID) -> None:
    async with get_client() as client:
        await record_inputs(client, run_id, {"text": "bye"})


async def artifacts_of(run_id: uuid.UUID) -> list[Any]:
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
        )


def test_inputs_and_outputs_in_the_platforms_shape(sdk: PipeDeploy) -> None:
    name = unique("io")
    sdk.create_deployment(
        f"{PIPELINES}:score",
        name,
        inputs_mapping=[
            InputSource(pipeline_input_name="text", endpoint_input_name="t", data_type="string"),
            InputSource(pipeline_input_name="repeat", constant_value=2, data_type="number"),
        ],
        outputs_mapping=[
            OutputDestination(pipeline_output_name="score", endpoint_output_name="s"),
            OutputDestination(pipeline_output_name="report", datastore_path="r/{execution_id}"),
        ],
    )
    run_id = anyio.run(_new_run, name)

    async def write() -> None:
        async with get_client() as client:
            await record_inputs(client, run_id, {"text": "hi", "repeat": 2})
            await record_outputs(client, run_id, {"s": 0.5}, {"report": f"r/{run_id}"})

    anyio.run(write)
    assert sdk.get_pipeline_execution_input(run_id, "text") == {
        "pipeline_input_name": "text",
        "data_type": "string",
        "endpoint_input_name": "t",
        "source": "endpoint",
        "value": "hi",
    }
    assert sdk.get_pipeline_execution_input(execution_id=run_id, input_name="repeat") == {
        "pipeline_input_name": "repeat",
        "data_type": "number",
        "constant_value": 2,
        "source": "constant",
        "value": 2,
    }
    expected_score = {
        "pipeline_output_name": "score",
        "data_type": "number",
        "endpoint_output_name": "s",
        "destination": "endpoint",
        "value": 0.5,
    }
    # by the pipeline output name (the platform's) or the name it was delivered under (ours)
    assert sdk.get_pipeline_execution_output(run_id, "score") == expected_score
    assert sdk.get_pipeline_execution_output(run_id, output_name="s") == expected_score
    assert sdk.get_pipeline_execution_output(run_id, "report")["datastore_path"] == f"r/{run_id}"
    assert sdk.get_pipeline_execution_output(run_id, "report")["destination"] == "datastore"
    # ours, the value alone
    assert sdk.get_pipeline_execution_input(run_id, "text", value_only=True) == "hi"
    assert sdk.get_pipeline_execution_output(run_id, "score", value_only=True) == 0.5
    sdk.delete_deployment(name)


# -- the data store ------------------------------------------------------------------------------


@pytest.fixture
def store_sdk(sdk: PipeDeploy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PipeDeploy:
    reference = ensure_local_data_store(tmp_path / "store", name=unique("platform-store"))
    monkeypatch.setenv(DATA_STORE_VARIABLE, reference)
    return PipeDeploy(work_pool_name=sdk.work_pool_name)


def test_data_store_verbs_the_platforms_way(store_sdk: PipeDeploy, tmp_path: Path) -> None:
    sdk = store_sdk
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights")
    uploaded = sdk.upload_data_store_object(str(source), object_path_in_datastore="models/a.bin")
    assert (uploaded["path"], uploaded["key"]) == ("models/a.bin", "models/a.bin")
    sdk.upload_data_store_object(
        filepath_or_buffer=io.BytesIO(b"{}"), object_path_in_datastore="models/meta.json"
    )
    sdk.upload_data_store_object(io.BytesIO(b"old"), "models_old/a.bin")  # ours, positionally

    info = sdk.get_data_store_object_information(object_path_in_datastore="models/a.bin")
    assert {"path", "last_modified", "size"} <= set(info) and info["size"] == 7

    listed = sdk.list_data_store_objects(folder_path="models")
    assert [o["path"] for o in listed] == ["models/a.bin", "models/meta.json"]
    assert [o["key"] for o in listed] == ["models/a.bin", "models/meta.json"]
    assert [o["path"] for o in sdk.list_data_store_objects("models")] == [
        "models/a.bin",
        "models/meta.json",
        "models_old/a.bin",
    ]  # our prefix is a prefix
    lazily = sdk.iter_data_store_objects(folder_path="models")
    assert not isinstance(lazily, list)
    assert list(lazily) == listed
    assert len(list(sdk.iter_data_store_objects())) == 3

    target = io.BytesIO()
    sdk.download_data_store_object(
        object_path_in_datastore="models/a.bin", filepath_or_buffer=target
    )
    assert target.getvalue() == b"weights"
    sdk.download_data_store_object("models/a.bin", str(tmp_path / "out.bin"))  # positionally
    assert (tmp_path / "out.bin").read_bytes() == b"weights"

    assert sdk.delete_data_store_object(object_path_in_datastore="models/a.bin") == {
        "path": "models/a.bin"
    }
    assert sdk.delete_data_store_object("models/meta.json") == {"path": "models/meta.json"}
    assert [o["path"] for o in sdk.list_data_store_objects(folder_path="models")] == []
    with pytest.raises(SpecError, match="two objects"):
        sdk.delete_data_store_object("a", object_path_in_datastore="b")
