"""Run flow runs of one deployment's pipeline in this process, with its io mapping.

For: `PipelineRunner` (resolve inputs before a run, route and record outputs inside it). An
elastic process makes one runner for its one run; a pod makes one for its lifetime. Not for:
loading the pipeline (`loader`), the flow engine itself (`flow_engine`).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import inspect
import os
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow

# No public API registers a run's suspension request without Prefect's per-run observer (see
# `_WithoutSuspensionObserver`); this private module is the registry the observer marks.
# No public API watches many flow runs for suspension with one connection; this is the observer
# Prefect's engine starts per run (see `execution._WithoutSuspensionObserver`).
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.context import (
    FlowRunContext,
    get_settings_context,
)
from prefect.logging import get_logger
from prefect.results import aget_default_result_storage, get_default_persist_setting

from prefect_pipedeploy._compat import engine_states_discarded
from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.datastore.configured import aload_data_store
from prefect_pipedeploy.engine.runlogs import fail_after_logs
from prefect_pipedeploy.exceptions import (
    PipeDeployError,
)
from prefect_pipedeploy.iomapping import (
    cleanup_execution_files,
    make_execution_dir,
    pipeline_inputs_of,
    resolve_inputs,
    route_outputs,
    uses_data_store,
)
from prefect_pipedeploy.prefect_api.records import (
    outputs_as_read,
    record_inputs,
    record_outputs,
    record_outputs_sync,
)
from prefect_pipedeploy.prefect_api.sealed import unseal_inputs
from prefect_pipedeploy.spec import DeploymentSpec

logger = get_logger("prefect_pipedeploy.engine.runner")


def outputs_of(value: Any) -> dict[str, Any]:
    """A pipeline's outputs: its returned dict, or its single value under `result`."""
    if value is None:
        return {}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    return {"result": value}


class PipelineRunner:
    """Runs flow runs of one deployment's pipeline in this process, with its io mapping.

    Before a run: its inputs are resolved from the mapping (endpoint values, constants,
    environment variables, data-store files) and recorded on the run. Inside the run, after the
    pipeline returns: its outputs are routed (endpoint response, data store) and recorded, so a
    Completed execution always has its outputs readable. An elastic process makes one runner for
    its one run; a pod makes one for its lifetime. Each run's downloaded input files live in a
    temporary directory of its own, removed by `cleanup` when the run is over.
    """

    def __init__(self, flow: Flow[..., Any], spec: DeploymentSpec) -> None:
        self.spec = spec
        self.inputs, self.required = pipeline_inputs_of(flow)
        self._workdirs: dict[UUID, Path] = {}
        self._routed: dict[UUID, tuple[dict[str, Any], dict[str, str]]] = {}
        self._store: DataStore | None = None
        self.flow = self._with_output_routing(flow)

    async def resolve_result_defaults(self, client: PrefectClient) -> None:
        """Pin the pipeline's default result storage and persistence, as Prefect resolves them.

        Prefect's engine looks both up on every run (two `GET /admin/storage` per run); a pod
        resolves them once, when it starts. A pipeline that sets its own keeps it. A change of
        the server's default result storage reaches a pod when it is re-created.
        """
        if self.flow.result_storage is None:
            self.flow.result_storage = await aget_default_result_storage()
        if self.flow.persist_result is None:
            settings = get_settings_context().settings.results
            self.flow.persist_result = (
                get_default_persist_setting()
                or settings.default_storage_block is not None
                or (
                    await client.read_server_default_result_storage()
                ).default_result_storage_block_id
                is not None
            )

    async def store(self) -> DataStore | None:
        """The data store, loaded once, when the mapping uses one."""
        if self._store is None and uses_data_store(self.spec):
            self._store = await aload_data_store()
        return self._store

    async def prepare(self, client: PrefectClient, flow_run: FlowRun) -> dict[str, Any] | None:
        """The pipeline's keyword arguments for `flow_run`; None (and the run Failed) if they
        cannot be resolved."""
        try:
            store = await self.store()
            parameters = await unseal_inputs(client, self.spec, flow_run.parameters or {})
            resolved = await asyncio.to_thread(
                resolve_inputs,
                self.spec,
                parameters,
                self.inputs,
                self.required,
                str(flow_run.id),
                self._workdir(flow_run.id),
                store,
                dict(os.environ),
            )
        except PipeDeployError as exc:
            await fail_after_logs(
                client, flow_run.id, f"The execution's inputs could not be resolved: {exc}"
            )
            return None
        for name in resolved.ignored:
            logger.warning(
                "Run %s: parameter %r is overridden by the input mapping", flow_run.id, name
            )
        if resolved.recorded:  # one API call fewer on the hot path when there is nothing to show
            await record_inputs(client, flow_run.id, resolved.recorded)
        return resolved.parameters

    def _workdir(self, flow_run_id: UUID) -> Path:
        """The run's own temporary directory for downloaded inputs (made on first use)."""
        if flow_run_id not in self._workdirs:
            self._workdirs[flow_run_id] = make_execution_dir(str(flow_run_id))
        return self._workdirs[flow_run_id]

    def take_outputs(self, flow_run_id: UUID) -> tuple[dict[str, Any], dict[str, str]]:
        """The run's endpoint outputs and the data-store keys of its stored ones, as a reader of
        its record sees them (`records.outputs_as_read`; empty when it recorded none);
        forgotten once taken."""
        routed = self._routed.pop(flow_run_id, None)
        return ({}, {}) if routed is None else outputs_as_read(*routed)

    def cleanup(self, flow_run: FlowRun) -> None:
        """Remove what the run downloaded, and its temporary directory (safe to call twice)."""
        self._routed.pop(flow_run.id, None)
        workdir = self._workdirs.pop(flow_run.id, None)
        if workdir is not None:
            cleanup_execution_files(workdir, str(flow_run.id))
            shutil.rmtree(workdir, ignore_errors=True)

    def _route(self, value: Any) -> tuple[UUID, Any, dict[str, Any], dict[str, str]]:
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        routed = route_outputs(
            self.spec,
            outputs_of(value),
            str(context.flow_run.id),
            datetime.datetime.now(datetime.timezone.utc),
            self._store,
        )
        return context.flow_run.id, context.client, routed.endpoint, routed.stored

    def _with_output_routing(self, flow: Flow[..., Any]) -> Flow[..., Any]:
        fn = flow.fn
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_and_route(*args: Any, **kwargs: Any) -> Any:
                value = await fn(*args, **kwargs)
                if _discarded():
                    return value
                # to_thread carries this run's context along, so _route sees the run
                run_id, client, endpoint, stored = await asyncio.to_thread(self._route, value)
                await record_outputs(client, run_id, endpoint, stored=stored)
                self._routed[run_id] = (endpoint, stored)
                return value

        else:

            @functools.wraps(fn)
            def run_and_route(*args: Any, **kwargs: Any) -> Any:
                value = fn(*args, **kwargs)
                if _discarded():
                    return value
                run_id, client, endpoint, stored = self._route(value)
                record_outputs_sync(client, run_id, endpoint, stored=stored)
                self._routed[run_id] = (endpoint, stored)
                return value

        wrapped = copy.copy(flow)
        wrapped.fn = run_and_route
        return wrapped


def _discarded() -> bool:
    """Whether the current run was cancelled while its pipeline ran on (a `def` pipeline in a
    pod's thread): its outputs are neither stored nor recorded."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and engine_states_discarded(context.flow_run.id))
