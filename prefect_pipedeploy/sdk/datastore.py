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

from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.datastore.configured import aload_data_store, data_store_reference
from prefect_pipedeploy.datastore.streams import Destination, Source
from prefect_pipedeploy.exceptions import (
    ExecutionValueNotFound,
    SpecError,
)
from prefect_pipedeploy.prefect_api.records import read_inputs, read_outputs, read_stored_outputs
from prefect_pipedeploy.sdk.base import Verbs
from prefect_pipedeploy.sdk.compat import (
    folder_prefix,
    input_records,
    one_path,
    output_mapping_for,
    output_record,
    with_path,
)
from prefect_pipedeploy.spec import DeploymentSpec, spec_from_job_variables

#: Our keyword for an object's path, and the platform's.
_PATH_NAMES = ("object_path", "object_path_in_datastore")


def _names(values: dict[str, Any]) -> str:
    return ", ".join(map(repr, values)) or "none"


class DataStoreVerbs(Verbs):
    """Data-store and execution-record verbs; mixed into `PipeDeploy`."""

    async def _store(self) -> DataStore:
        async with self._client() as client:
            return await aload_data_store(self.data_store or data_store_reference(), client)

    async def aupload_data_store_object(
        self,
        filepath_or_buffer: Source,
        object_path: str | None = None,
        *,
        object_path_in_datastore: str | None = None,
    ) -> dict[str, Any]:
        """Store a local file (a path) or a binary file-like object at `object_path` (the
        platform's `object_path_in_datastore`), replacing any object there; returns the stored
        object's information."""
        key = one_path(object_path, object_path_in_datastore, *_PATH_NAMES)
        store = await self._store()
        return with_path((await store.aupload(filepath_or_buffer, key)).model_dump(mode="json"))

    async def adownload_data_store_object(
        self,
        object_path: str | None = None,
        filepath_or_buffer: Destination | None = None,
        *,
        object_path_in_datastore: str | None = None,
    ) -> dict[str, Any]:
        """Write the object at `object_path` (the platform's `object_path_in_datastore`) to a
        local path (parent folders are created) or a writable binary file-like object; returns
        the object's information."""
        key = one_path(object_path, object_path_in_datastore, *_PATH_NAMES)
        if filepath_or_buffer is None:
            raise SpecError("give where to write the object: filepath_or_buffer=...")
        store = await self._store()
        return with_path((await store.adownload(key, filepath_or_buffer)).model_dump(mode="json"))

    async def alist_data_store_objects(
        self, prefix: str = "", *, folder_path: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object whose path starts with `prefix`, or that is in the platform's
        `folder_path` (a folder: "models" lists "models/..."), sorted by path (sha256 is None
        here; ask `get_data_store_object_information`)."""
        return [
            info async for info in self.aiter_data_store_objects(prefix, folder_path=folder_path)
        ]

    async def aiter_data_store_objects(
        self, prefix: str = "", *, folder_path: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The objects `list_data_store_objects` lists, one at a time."""
        key_prefix = folder_prefix(prefix, folder_path)
        store = await self._store()
        for info in await store.alist(key_prefix):
            yield with_path(info.model_dump(mode="json"))

    async def aget_data_store_object_information(
        self, object_path: str | None = None, *, object_path_in_datastore: str | None = None
    ) -> dict[str, Any]:
        """Path, size, last modification time (UTC) and sha256 of one object."""
        key = one_path(object_path, object_path_in_datastore, *_PATH_NAMES)
        store = await self._store()
        return with_path((await store.ainfo(key)).model_dump(mode="json"))

    async def adelete_data_store_object(
        self, object_path: str | None = None, *, object_path_in_datastore: str | None = None
    ) -> dict[str, Any]:
        """Delete one object; a missing object is an error. Returns what was deleted, as the
        platform does: {"path"}."""
        key = one_path(object_path, object_path_in_datastore, *_PATH_NAMES)
        store = await self._store()
        await store.adelete_object(key)
        return {"path": key}

    async def aget_pipeline_execution_input(
        self, execution_id: str | UUID, input_name: str, *, value_only: bool = False
    ) -> Any:
        """One input an execution's pipeline received (`input_name`: a pipeline input name), as
        the platform gives it: {"pipeline_input_name", "data_type", <its source field>,
        "source", "value"}; with `value_only`, the value alone.

        Secret inputs read "***"; data-store inputs read {"datastore_path", "size", "sha256"}.
        """
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            inputs = await read_inputs(client, flow_run.id)
            spec = await _spec_of(client, flow_run)
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
        value = inputs[input_name]
        if value_only:
            return value
        return input_records({input_name: value}, spec)[0]

    async def aget_pipeline_execution_output(
        self, execution_id: str | UUID, output_name: str, *, value_only: bool = False
    ) -> Any:
        """One output of an execution, by its pipeline output name or the endpoint output name
        it was delivered under, as the platform gives it: {"pipeline_output_name",
        "data_type", <its destination field>, "destination", "value"}; with `value_only`, the
        value alone. An output written to the data store has the value
        {"datastore_path": key}."""
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            outputs = await read_outputs(client, flow_run.id)
            stored = await read_stored_outputs(client, flow_run.id) or {}
            spec = await _spec_of(client, flow_run)
        if outputs is None:
            raise ExecutionValueNotFound(
                f"execution {str(execution_id)!r} recorded no outputs: it has not finished, or "
                "it failed (see its status with `get_pipeline_execution`)"
            )
        mapping = output_mapping_for(output_name, spec.outputs_mapping if spec else [])
        delivered = [output_name]
        if mapping is not None:
            delivered += [mapping.endpoint_output_name or "", mapping.pipeline_output_name]
        for name in delivered:
            if name in outputs:
                value = outputs[name]
                return value if value_only else output_record(name, value, mapping)
            if name in stored:
                value = {"datastore_path": stored[name]}
                return value if value_only else output_record(name, value, mapping, stored[name])
        raise ExecutionValueNotFound(
            f"execution {str(execution_id)!r} has no output {output_name!r}; its recorded outputs "
            f"are {_names({**outputs, **stored})}"
        )

    def upload_data_store_object(
        self,
        filepath_or_buffer: Source,
        object_path: str | None = None,
        *,
        object_path_in_datastore: str | None = None,
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.aupload_data_store_object(
                filepath_or_buffer, object_path, object_path_in_datastore=object_path_in_datastore
            )
        )

    def download_data_store_object(
        self,
        object_path: str | None = None,
        filepath_or_buffer: Destination | None = None,
        *,
        object_path_in_datastore: str | None = None,
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.adownload_data_store_object(
                object_path, filepath_or_buffer, object_path_in_datastore=object_path_in_datastore
            )
        )

    def list_data_store_objects(
        self, prefix: str = "", *, folder_path: str | None = None
    ) -> list[dict[str, Any]]:
        return run_coro_as_sync(self.alist_data_store_objects(prefix, folder_path=folder_path))

    def iter_data_store_objects(
        self, prefix: str = "", *, folder_path: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The objects `list_data_store_objects` lists, one at a time: the store is read
        when the first one is asked for."""
        yield from self.list_data_store_objects(prefix, folder_path=folder_path)

    def get_data_store_object_information(
        self, object_path: str | None = None, *, object_path_in_datastore: str | None = None
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.aget_data_store_object_information(
                object_path, object_path_in_datastore=object_path_in_datastore
            )
        )

    def delete_data_store_object(
        self, object_path: str | None = None, *, object_path_in_datastore: str | None = None
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.adelete_data_store_object(
                object_path, object_path_in_datastore=object_path_in_datastore
            )
        )

    def get_pipeline_execution_input(
        self, execution_id: str | UUID, input_name: str, *, value_only: bool = False
    ) -> Any:
        return run_coro_as_sync(
            self.aget_pipeline_execution_input(execution_id, input_name, value_only=value_only)
        )

    def get_pipeline_execution_output(
        self, execution_id: str | UUID, output_name: str, *, value_only: bool = False
    ) -> Any:
        return run_coro_as_sync(
            self.aget_pipeline_execution_output(execution_id, output_name, value_only=value_only)
        )


async def _spec_of(client: PrefectClient, flow_run: FlowRun) -> DeploymentSpec | None:
    """The settings of the run's deployment; None without one (or once it is deleted)."""
    if flow_run.deployment_id is None:
        return None
    try:
        deployment = await client.read_deployment(flow_run.deployment_id)
    except ObjectNotFound:
        return None
    return spec_from_job_variables(deployment.job_variables)
