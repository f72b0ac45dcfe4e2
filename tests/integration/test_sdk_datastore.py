"""The data store and the execution records through the SDK, on a real Prefect server.

The local data store block is saved on the session's server the way `pipedeploy up` saves it;
the SDK verbs run in-process. Execution records are written on flow runs created directly
through the Prefect client and read back through the SDK. The `pipedeploy datastore` commands,
run as a user runs them, are tests/e2e/test_cli_datastore.py.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.datastore.configured import (
    DATA_STORE_VARIABLE,
    aensure_local_data_store,
    aload_data_store,
    ensure_local_data_store,
    load_data_store,
)
from prefect_pipedeploy.exceptions import (
    DataStoreObjectNotFound,
    ExecutionNotFound,
    ExecutionValueNotFound,
)
from prefect_pipedeploy.iomapping import DataStoreNotConfigured
from prefect_pipedeploy.prefect_api.records import (
    read_inputs,
    read_outputs,
    read_stored_outputs,
    record_inputs,
    record_inputs_sync,
    record_outputs,
)
from prefect_pipedeploy.sdk import PipeDeploy
from prefect_pipedeploy.sdk.datastore import DataStoreVerbs


class Client(PipeDeploy, DataStoreVerbs):
    """What `PipeDeploy` becomes once the lead adds the mixin."""


@flow(name="pipedeploy-records-test")
def recorded_pipeline(x: int = 1) -> dict[str, int]:
    return {"y": x}


@pytest.fixture(scope="module")
def store_root(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-store")


@pytest.fixture(scope="module")
def reference(store_root: Path) -> str:
    return ensure_local_data_store(store_root, name=f"test-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def sdk(reference: str, monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv(DATA_STORE_VARIABLE, reference)
    return Client()


# -- the block -----------------------------------------------------------------------------------


def test_ensure_local_data_store_saves_a_loadable_block(
    reference: str, store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert reference.startswith("pipedeploy-local-data-store/test-")
    store = load_data_store(reference)
    assert isinstance(store, LocalDataStore)
    assert Path(store.root) == store_root.resolve()

    monkeypatch.setenv(DATA_STORE_VARIABLE, reference)
    assert load_data_store().root == store.root  # type: ignore[attr-defined]

    # Saving again replaces the block (a new root); the async twin does the same.
    name = reference.split("/", 1)[1]
    assert ensure_local_data_store(tmp_path, name) == reference
    assert load_data_store(reference).root == str(tmp_path.resolve())  # type: ignore[attr-defined]
    assert anyio.run(aensure_local_data_store, store_root, name) == reference
    loaded = anyio.run(aload_data_store, reference)
    assert loaded.root == str(store_root.resolve())  # type: ignore[attr-defined]


def test_a_missing_block_says_how_to_configure_one(prefect_api: str) -> None:
    with pytest.raises(DataStoreNotConfigured) as caught:
        load_data_store("pipedeploy-local-data-store/no-such-block")
    message = str(caught.value)
    assert (
        "data store block 'pipedeploy-local-data-store/no-such-block' cannot be loaded" in message
    )
    assert DATA_STORE_VARIABLE in message


def test_a_block_that_is_not_a_data_store_is_refused(prefect_api: str) -> None:
    from prefect.blocks.system import Secret

    name = f"not-a-store-{uuid.uuid4().hex[:6]}"
    Secret(value="x").save(name, _sync=True)  # type: ignore[call-arg, arg-type]
    with pytest.raises(DataStoreNotConfigured, match=f"block 'secret/{name}' is a Secret, not a"):
        load_data_store(f"secret/{name}")


# -- SDK verbs -----------------------------------------------------------------------------------


def test_sdk_data_store_verbs(sdk: Client, tmp_path: Path) -> None:
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 100)
    prefix = f"sdk-{uuid.uuid4().hex[:6]}"

    uploaded = sdk.upload_data_store_object(str(source), f"{prefix}/model.bin")
    assert uploaded["key"] == f"{prefix}/model.bin"
    assert uploaded["size"] == 700
    json.dumps(uploaded)  # JSON-friendly
    sdk.upload_data_store_object(io.BytesIO(b"{}"), f"{prefix}/meta.json")

    listed = sdk.list_data_store_objects(prefix + "/")
    assert [item["key"] for item in listed] == [f"{prefix}/meta.json", f"{prefix}/model.bin"]
    assert isinstance(listed[0]["last_modified"], str)

    info = sdk.get_data_store_object_information(f"{prefix}/model.bin")
    assert info == uploaded

    downloaded = sdk.download_data_store_object(f"{prefix}/model.bin", tmp_path / "out" / "m.bin")
    assert (tmp_path / "out" / "m.bin").read_bytes() == source.read_bytes()
    assert downloaded["sha256"] == uploaded["sha256"]
    buffer = io.BytesIO()
    sdk.download_data_store_object(f"{prefix}/meta.json", buffer)
    assert buffer.getvalue() == b"{}"

    sdk.delete_data_store_object(f"{prefix}/meta.json")
    assert [item["key"] for item in sdk.list_data_store_objects(prefix)] == [f"{prefix}/model.bin"]
    with pytest.raises(DataStoreObjectNotFound, match=f"'{prefix}/meta.json'"):
        sdk.delete_data_store_object(f"{prefix}/meta.json")


def test_sdk_uses_its_own_data_store_when_set(
    reference: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_STORE_VARIABLE, raising=False)
    with pytest.raises(DataStoreNotConfigured, match=DATA_STORE_VARIABLE):
        Client().list_data_store_objects()
    other = ensure_local_data_store(tmp_path, f"other-{uuid.uuid4().hex[:6]}")
    client = Client()
    client.data_store = other
    client.upload_data_store_object(io.BytesIO(b"here"), "only/here.txt")
    assert (tmp_path / "only" / "here.txt").read_bytes() == b"here"


def test_async_cores(sdk: Client) -> None:
    async def scenario() -> None:
        key = f"async-{uuid.uuid4().hex[:6]}.txt"
        await sdk.aupload_data_store_object(io.BytesIO(b"a"), key)
        assert (await sdk.aget_data_store_object_information(key))["size"] == 1
        await sdk.adelete_data_store_object(key)

    anyio.run(scenario)


# -- execution records ---------------------------------------------------------------------------


async def _flow_run_id() -> uuid.UUID:
    async with get_client() as client:
        return (await client.create_flow_run(recorded_pipeline, parameters={"x": 2})).id


def test_inputs_and_outputs_recorded_on_a_run(sdk: Client) -> None:
    run_id = anyio.run(_flow_run_id)

    async def write() -> None:
        async with get_client() as client:
            await record_inputs(client, run_id, {"x": 2, "token": "***"})
            await record_outputs(
                client, run_id, {"score": 0.5, "labels": ["a"]}, stored={"report": "r/1.pdf"}
            )

    anyio.run(write)

    assert sdk.get_pipeline_execution_input(run_id, "x", value_only=True) == 2
    assert sdk.get_pipeline_execution_input(str(run_id), "token", value_only=True) == "***"
    assert sdk.get_pipeline_execution_output(run_id, "score", value_only=True) == 0.5
    assert sdk.get_pipeline_execution_output(run_id, "labels", value_only=True) == ["a"]
    assert sdk.get_pipeline_execution_output(run_id, "report", value_only=True) == {
        "datastore_path": "r/1.pdf"
    }

    with pytest.raises(
        ExecutionValueNotFound, match="no input 'nope'; its recorded inputs are 'x', 'token'"
    ):
        sdk.get_pipeline_execution_input(run_id, "nope", value_only=True)
    with pytest.raises(
        ExecutionValueNotFound,
        match="no output 'nope'; its recorded outputs are 'score', 'labels', 'report'",
    ):
        sdk.get_pipeline_execution_output(run_id, "nope", value_only=True)

    async def read() -> tuple[Any, Any]:
        async with get_client() as client:
            return await read_outputs(client, run_id), await read_stored_outputs(client, run_id)

    # The gateway reads only what goes back to the caller.
    assert anyio.run(read) == ({"score": 0.5, "labels": ["a"]}, {"report": "r/1.pdf"})


def test_a_retried_run_reads_its_latest_record(sdk: Client) -> None:
    run_id = anyio.run(_flow_run_id)
    with get_client(sync_client=True) as client:
        record_inputs_sync(client, run_id, {"x": "first attempt"})
        record_inputs_sync(client, run_id, {"x": "second attempt"})
    assert sdk.get_pipeline_execution_input(run_id, "x", value_only=True) == "second attempt"

    async def read() -> Any:
        async with get_client() as client:
            return await read_inputs(client, run_id)

    assert anyio.run(read) == {"x": "second attempt"}


def test_records_missing(sdk: Client) -> None:
    run_id = anyio.run(_flow_run_id)
    with pytest.raises(ExecutionValueNotFound, match="recorded no inputs"):
        sdk.get_pipeline_execution_input(run_id, "x", value_only=True)
    with pytest.raises(ExecutionValueNotFound, match="recorded no outputs"):
        sdk.get_pipeline_execution_output(run_id, "y", value_only=True)
    for missing in (str(uuid.uuid4()), "not-an-id"):
        with pytest.raises(ExecutionNotFound, match=f"no execution with id '{missing}'"):
            sdk.get_pipeline_execution_input(missing, "x", value_only=True)
        with pytest.raises(ExecutionNotFound):
            sdk.get_pipeline_execution_output(missing, "y", value_only=True)


def test_a_client_made_for_an_api_sends_its_block_events_there_with_none_configured(
    prefect_api: str, tmp_path: Path
) -> None:
    """`PipeDeploy(api_url=...)` in a process with no PREFECT_API_URL: the data store block's
    `.loaded` event goes to that API. Before, Prefect started a temporary server of its own
    for it ("database is locked" tracebacks)."""
    import os
    import subprocess
    import sys

    from prefect.client.orchestration import PrefectClient

    reference = ensure_local_data_store(tmp_path / "store", f"given-api-{uuid.uuid4().hex[:8]}")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", DATA_STORE_VARIABLE)}
    env["PREFECT_HOME"] = str(tmp_path / "client-home")  # no `pipedeploy up` stack to find
    script = (
        "import io\n"
        "from prefect_pipedeploy import PipeDeploy\n"
        f"pd = PipeDeploy(api_url={prefect_api!r}, data_store={reference!r})\n"
        "pd.upload_data_store_object(io.BytesIO(b'hello'), 'given/api.txt')\n"
        "print(sorted(o['key'] for o in pd.list_data_store_objects('given')))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "['given/api.txt']"
    assert "temporary server" not in ran.stderr, ran.stderr
    assert "database is locked" not in ran.stderr, ran.stderr

    async def loaded_events() -> list[Any]:
        async with PrefectClient(prefect_api) as client:  # read, not loaded: no event of ours
            slug, name = reference.split("/")
            block = await client.read_block_document_by_name(name, slug)
            block_id = str(block.id)
            answer = await client._client.post(
                "/events/filter",
                json={
                    "filter": {
                        "event": {"prefix": ["prefect.block."]},
                        "resource": {"id": [f"prefect.block-document.{block_id}"]},
                    }
                },
            )
            return answer.json()["events"]

    from tests.support.eventually import eventually

    events = eventually(lambda: anyio.run(loaded_events), 30, 0.5)
    assert all(e["event"].endswith(".loaded") for e in events), events
