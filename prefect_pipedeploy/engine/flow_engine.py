"""Run one flow run through Prefect's flow engine in this process.

For: `run_pipeline_sync` (a `def` pipeline, blocking its thread) and `run_pipeline_async` (an
`async def` pipeline, on the current loop), optionally without Prefect's per-run suspension
observer (a pod watches all its runs with one), and `execute_flow_run` (inputs, run, clean up).
Not for: loading the pipeline or its io mapping (`runner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

# No public API registers a run's suspension request without Prefect's per-run observer (see
# `_WithoutSuspensionObserver`); this private module is the registry the observer marks.
from prefect._flow_run_suspension import (
    FlowRunSuspensionRequest,
    register_flow_run_suspension_request,
)
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import AsyncFlowRunEngine, FlowRunEngine, run_flow
from prefect.flows import Flow
from prefect.states import State
from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs

from prefect_pipedeploy.engine.runner import PipelineRunner


class _WithoutSuspensionObserver:
    """Flow engines for a pod: a run's suspension request is registered, but no observer is
    started for it.

    Prefect's engine starts, for every run of a deployment, a thread with its own event loop,
    client and `/events/out` websocket that watches for the run being suspended from outside,
    and waits for its first read of the run (about 45 ms per run on 2 cores). A pod watches
    all its runs with one observer instead (`engine.pod`), which marks the request registered here.
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
