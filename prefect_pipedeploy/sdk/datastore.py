"""The SDK's data-store and execution-record verbs, as a mixin of `PipeDeploy`.

For: `upload_data_store_object`, `download_data_store_object`, `list_data_store_objects`,
`get_data_store_object_information`, `delete_data_store_object` on the configured data store,
and `get_pipeline_execution_input` / `get_pipeline_execution_output` from what an execution
recorded. Each verb has an async core (`aupload_data_store_object`) and a thin sync twin, and
returns plain JSON-friendly dicts and lists.
Not for: the data store's own logic (`datastore`), resolving or routing at run time
(`iomapping`), or deployments and executions (`deployments`, `executions`).

    from prefect_pipedeploy import PipeDeploy
    pd = PipeDeploy()      # uses PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE, or pd.data_store
    pd.upload_data_store_object("model.pkl", "models/model.pkl")
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.datastore.configured import aload_data_store, data_store_reference
from prefect_pipedeploy.datastore.streams import Destination, Source
from prefect_pipedeploy.exceptions import (
    ExecutionValueNotFound,
)
from prefect_pipedeploy.prefect_api.records import read_inputs, read_outputs, read_stored_outputs
from prefect_pipedeploy.sdk.base import Verbs


def _names(values: dict[str, Any]) -> str:
    return ", ".join(map(repr, values)) or "none"


class DataStoreVerbs(Verbs):
    """Data-store and execution-record verbs; mixed into `PipeDeploy`."""

    async def _store(self) -> DataStore:
        async with self._client() as client:
            return await aload_data_store(self.data_store or data_store_reference(), client)

    async def aupload_data_store_object(
        self, filepath_or_buffer: Source, object_path: str
    ) -> dict[str, Any]:
        """Store a local file (a path) or a binary file-like object at `object_path`, replacing
        any object there; returns the stored object's information."""
        store = await self._store()
        return (await store.aupload(filepath_or_buffer, object_path)).model_dump(mode="json")

    async def adownload_data_store_object(
        self, object_path: str, filepath_or_buffer: Destination
    ) -> dict[str, Any]:
        """Write the object at `object_path` to a local path (parent folders are created) or a
        writable binary file-like object; returns the object's information."""
        store = await self._store()
        return (await store.adownload(object_path, filepath_or_buffer)).model_dump(mode="json")

    async def alist_data_store_objects(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every object whose path starts with `prefix`, sorted by path (sha256 is None here;
        ask `get_data_store_object_information`)."""
        store = await self._store()
        return [info.model_dump(mode="json") for info in await store.alist(prefix)]

    async def aget_data_store_object_information(self, object_path: str) -> dict[str, Any]:
        """Path, size, last modification time (UTC) and sha256 of one object."""
        store = await self._store()
        return (await store.ainfo(object_path)).model_dump(mode="json")

    async def adelete_data_store_object(self, object_path: str) -> None:
        """Delete one object; a missing object is an error."""
        store = await self._store()
        await store.adelete_object(object_path)

    async def aget_pipeline_execution_input(self, execution_id: str | UUID, input_name: str) -> Any:
        """The value an execution's pipeline received for `input_name` (a pipeline input name).

        Secret inputs read "***"; data-store inputs read {"datastore_path", "size", "sha256"}.
        """
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            inputs = await read_inputs(client, flow_run.id)
        if inputs is None:
            raise ExecutionValueNotFound(
                f"execution {str(execution_id)!r} recorded no inputs: it has not started yet, or "
                "failed before its inputs were resolved (see its message with "
                "`get_pipeline_execution`)"
            )
        if input_name not in inputs:
            raise ExecutionValueNotFound(
                f"execution {str(execution_id)!r} has no input {input_name!r}; its recorded "
                f"inputs are {_names(inputs)}"
            )
        return inputs[input_name]

    async def aget_pipeline_execution_output(
        self, execution_id: str | UUID, output_name: str
    ) -> Any:
        """The value of one output of an execution, by the name it was delivered under: its
        endpoint output name, or for an output written to the data store its pipeline output
        name, which reads {"datastore_path": key}."""
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            outputs = await read_outputs(client, flow_run.id)
            stored = await read_stored_outputs(client, flow_run.id) or {}
        if outputs is None:
            raise ExecutionValueNotFound(
                f"execution {str(execution_id)!r} recorded no outputs: it has not finished, or "
                "it failed (see its status with `get_pipeline_execution`)"
            )
        if output_name in outputs:
            return outputs[output_name]
        if output_name in stored:
            return {"datastore_path": stored[output_name]}
        raise ExecutionValueNotFound(
            f"execution {str(execution_id)!r} has no output {output_name!r}; its recorded outputs "
            f"are {_names({**outputs, **stored})}"
        )

    def upload_data_store_object(
        self, filepath_or_buffer: Source, object_path: str
    ) -> dict[str, Any]:
        return run_coro_as_sync(self.aupload_data_store_object(filepath_or_buffer, object_path))

    def download_data_store_object(
        self, object_path: str, filepath_or_buffer: Destination
    ) -> dict[str, Any]:
        return run_coro_as_sync(self.adownload_data_store_object(object_path, filepath_or_buffer))

    def list_data_store_objects(self, prefix: str = "") -> list[dict[str, Any]]:
        return run_coro_as_sync(self.alist_data_store_objects(prefix))

    def get_data_store_object_information(self, object_path: str) -> dict[str, Any]:
        return run_coro_as_sync(self.aget_data_store_object_information(object_path))

    def delete_data_store_object(self, object_path: str) -> None:
        run_coro_as_sync(self.adelete_data_store_object(object_path))

    def get_pipeline_execution_input(self, execution_id: str | UUID, input_name: str) -> Any:
        return run_coro_as_sync(self.aget_pipeline_execution_input(execution_id, input_name))

    def get_pipeline_execution_output(self, execution_id: str | UUID, output_name: str) -> Any:
        return run_coro_as_sync(self.aget_pipeline_execution_output(execution_id, output_name))
