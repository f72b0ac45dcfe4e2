"""Execute one flow run in this process through Prefect's flow engine.

For: the work one execution does wherever it runs: load the pipeline of a flow run, run it with
Prefect's engine (so states, logs and results are tracked like any other run), and record its
outputs on the run. An elastic execution is this module as a fresh process; a low-latency pod
calls the same functions in-process. Not for: picking runs or watching processes (the worker),
or keeping a pipeline warm (the pod).

    python -m prefect_pipedeploy.execution <flow-run-id>    # what the worker starts per elastic run
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import inspect
import os
import sys
import tempfile
from collections.abc import Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

# No public API registers a run's suspension request without Prefect's per-run observer (see
# `_WithoutSuspensionObserver`); this private module is the registry the observer marks.
from prefect._flow_run_suspension import (
    FlowRunSuspensionRequest,
    register_flow_run_suspension_request,
)
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext, get_settings_context
from prefect.flow_engine import AsyncFlowRunEngine, FlowRunEngine, run_flow
from prefect.flows import Flow, load_flow_from_flow_run
from prefect.logging import get_logger
from prefect.results import aget_default_result_storage, get_default_persist_setting
from prefect.states import Failed, State
from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs
from prefect.utilities.engine import propose_state

from prefect_pipedeploy.datastore import DataStore
from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.iomapping import (
    aload_data_store,
    cleanup_execution_files,
    pipeline_inputs_of,
    resolve_inputs,
    route_outputs,
    uses_data_store,
)
from prefect_pipedeploy.records import record_inputs, record_outputs, record_outputs_sync
from prefect_pipedeploy.sealed import unseal_inputs
from prefect_pipedeploy.spec import DeploymentSpec, spec_from_job_variables

logger = get_logger("prefect_pipedeploy.execution")


async def load_pipeline(client: PrefectClient, flow_run: FlowRun) -> Flow[..., Any]:
    """Import the pipeline of `flow_run`'s deployment; a plain function becomes a flow."""
    del client  # Prefect's loader makes its own client
    return await load_flow_from_flow_run(flow_run, use_placeholder_flow=False)  # type: ignore[call-arg]


def outputs_of(value: Any) -> dict[str, Any]:
    """A pipeline's outputs: its returned dict, or its single value under `result`."""
    if value is None:
        return {}
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return value
    return {"result": value}


async def fail_run(client: PrefectClient, flow_run_id: UUID, message: str) -> None:
    """Mark a run Failed with `message` (before the engine took it over)."""
    from prefect.exceptions import Abort

    try:
        await propose_state(client, Failed(message=message), flow_run_id=flow_run_id)
    except Abort:
        pass  # it reached a final state already


class PipelineRunner:
    """Runs flow runs of one deployment's pipeline in this process, with its io mapping.

    Before a run: its inputs are resolved from the mapping (endpoint values, constants,
    environment variables, data-store files) and recorded on the run. Inside the run, after the
    pipeline returns: its outputs are routed (endpoint response, data store) and recorded, so a
    Completed execution always has its outputs readable. An elastic process makes one runner for
    its one run; a pod makes one for its lifetime.
    """

    def __init__(self, flow: Flow[..., Any], spec: DeploymentSpec) -> None:
        self.spec = spec
        self.inputs, self.required = pipeline_inputs_of(flow)
        self.workdir = Path(tempfile.mkdtemp(prefix="pipedeploy-exec-"))
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
                self.workdir,
                store,
                dict(os.environ),
            )
        except PipeDeployError as exc:
            await fail_run(
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

    def cleanup(self, flow_run: FlowRun) -> None:
        cleanup_execution_files(self.workdir, str(flow_run.id))

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
                # to_thread carries this run's context along, so _route sees the run
                run_id, client, endpoint, stored = await asyncio.to_thread(self._route, value)
                await record_outputs(client, run_id, endpoint, stored=stored)
                return value

        else:

            @functools.wraps(fn)
            def run_and_route(*args: Any, **kwargs: Any) -> Any:
                value = fn(*args, **kwargs)
                run_id, client, endpoint, stored = self._route(value)
                record_outputs_sync(client, run_id, endpoint, stored=stored)
                return value

        wrapped = copy.copy(flow)
        wrapped.fn = run_and_route
        return wrapped


class _WithoutSuspensionObserver:
    """Flow engines for a pod: a run's suspension request is registered, but no observer is
    started for it.

    Prefect's engine starts, for every run of a deployment, a thread with its own event loop,
    client and `/events/out` websocket that watches for the run being suspended from outside,
    and waits for its first read of the run (about 45 ms per run on 2 cores). A pod watches
    all its runs with one observer instead (`pod.py`), which marks the request registered here.
    """

    flow_run: FlowRun | None
    _get_flow_run_suspension_request: Any

    @contextmanager
    def setup_flow_run_suspension_request(self) -> Generator[FlowRunSuspensionRequest, None, None]:
        assert self.flow_run is not None
        request: FlowRunSuspensionRequest = self._get_flow_run_suspension_request()
        with register_flow_run_suspension_request(self.flow_run.id, request):
            request.raise_if_requested()
            yield request


class _PodFlowRunEngine(_WithoutSuspensionObserver, FlowRunEngine[Any, Any]):
    pass


class _PodAsyncFlowRunEngine(_WithoutSuspensionObserver, AsyncFlowRunEngine[Any, Any]):
    pass


def _call_parameters(
    flow: Flow[..., Any], flow_run: FlowRun, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    """The parameters `run_flow` would use: the given ones, else the run's with defaults."""
    if parameters:
        return parameters
    args, kwargs = parameters_to_args_kwargs(flow.fn, flow_run.parameters or {})
    return get_call_parameters(flow.fn, args, kwargs)


def run_pipeline_sync(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any] | None = None,
    *,
    shared_observer: bool = False,
) -> State[Any]:
    """Run a `def` pipeline's flow run through the sync engine; blocks this thread.

    `shared_observer`: the caller watches for suspension itself (a pod), so the engine starts
    no per-run observer.
    """
    if shared_observer and not flow.isgenerator:
        engine = _PodFlowRunEngine(
            flow=flow, flow_run=flow_run, parameters=_call_parameters(flow, flow_run, parameters)
        )
        with engine.start():
            while engine.is_running():
                with engine.run_context():
                    _ = engine.call_flow_fn()  # the result is kept on the engine
        return engine.state
    state = run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")
    assert isinstance(state, State)
    return state


async def run_pipeline_async(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any] | None = None,
    *,
    shared_observer: bool = False,
) -> State[Any]:
    """Run an `async def` pipeline's flow run on the current event loop (`shared_observer`:
    see `run_pipeline_sync`)."""
    if shared_observer and not flow.isgenerator:
        engine = _PodAsyncFlowRunEngine(
            flow=flow, flow_run=flow_run, parameters=_call_parameters(flow, flow_run, parameters)
        )
        async with engine.start():
            while engine.is_running():
                async with engine.run_context():
                    _ = await engine.call_flow_fn()  # the result is kept on the engine
        return engine.state
    state = await run_flow(  # type: ignore[misc]
        flow, flow_run=flow_run, parameters=parameters, return_type="state"
    )
    assert isinstance(state, State)
    return state


async def execute_flow_run(
    client: PrefectClient, runner: PipelineRunner, flow_run: FlowRun
) -> State[Any] | None:
    """Resolve inputs, run `flow_run` in this process, clean up; None if it never started.

    An `async def` pipeline runs on the current event loop; a `def` pipeline runs in a thread
    of its own (the sync engine blocks), keeping the loop responsive.
    """
    parameters = await runner.prepare(client, flow_run)
    if parameters is None:
        return None
    try:
        if runner.flow.isasync:
            return await run_pipeline_async(runner.flow, flow_run, parameters)
        return await asyncio.to_thread(run_pipeline_sync, runner.flow, flow_run, parameters)
    finally:
        runner.cleanup(flow_run)


async def _main(flow_run_id: UUID) -> int:
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        try:
            flow = await load_pipeline(client, flow_run)
        except Exception as exc:
            message = f"Could not load the pipeline: {type(exc).__name__}: {exc}"
            logger.error(message)
            await fail_run(client, flow_run_id, message)
            return 0
        deployment = await client.read_deployment(flow_run.deployment_id)  # type: ignore[arg-type]
        try:
            spec = spec_from_job_variables(deployment.job_variables)
        except PipeDeployError as exc:
            await fail_run(client, flow_run_id, f"The deployment's settings are invalid: {exc}")
            return 0
        await execute_flow_run(client, PipelineRunner(flow, spec), flow_run)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m prefect_pipedeploy.execution <flow-run-id>", file=sys.stderr)
        return 2
    return asyncio.run(_main(UUID(args[0])))


if __name__ == "__main__":
    sys.exit(main())
