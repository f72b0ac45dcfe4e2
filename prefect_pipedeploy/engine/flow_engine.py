"""Run one flow run through Prefect's flow engine in this process, its logs stored before its
final state.

For: `run_pipeline_sync` (a `def` pipeline, blocking its thread) and `run_pipeline_async` (an
`async def` pipeline, on the current loop), optionally without Prefect's per-run suspension
observer (a pod watches all its runs with one); `execute_flow_run` (inputs, run, clean up).
Every run goes through
an engine that stores the lines the run has logged right before its final state is set
(`runlogs`), so an execution reported final has them all; the lines Prefect logs after that
state ("Finished in state ...") follow with the run's end-of-run flush.
Not for: loading the pipeline or its io mapping (`runner`), sending log lines (`runlogs`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow
from prefect.flows import Flow
from prefect.states import State
from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs

from prefect_pipedeploy._compat import (
    run_in_engine_async,
    run_in_engine_sync,
    run_in_pod_engine_async,
    run_in_pod_engine_sync,
)
from prefect_pipedeploy.engine.runlogs import flush_run_logs, process_run_logs
from prefect_pipedeploy.engine.runner import PipelineRunner


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
    no per-run observer. A generator pipeline runs in Prefect's own engine: its lines are
    stored by the end-of-run flush, after its final state.
    """
    run_logs = process_run_logs()
    if flow.isgenerator:
        state = run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")
        assert isinstance(state, State)
        return state
    before_final = run_logs.flush if run_logs is not None else None
    call_parameters = _call_parameters(flow, flow_run, parameters)
    if shared_observer:
        return run_in_pod_engine_sync(flow, flow_run, call_parameters, before_final)
    return run_in_engine_sync(flow, flow_run, call_parameters, before_final)


async def run_pipeline_async(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any] | None = None,
    *,
    shared_observer: bool = False,
) -> State[Any]:
    """Run an `async def` pipeline's flow run on the current event loop (`shared_observer`,
    generator pipelines: see `run_pipeline_sync`)."""
    run_logs = process_run_logs()
    if flow.isgenerator:
        state = await run_flow(  # type: ignore[misc]
            flow, flow_run=flow_run, parameters=parameters, return_type="state"
        )
        assert isinstance(state, State)
        return state
    before_final = run_logs.aflush if run_logs is not None else None
    call_parameters = _call_parameters(flow, flow_run, parameters)
    if shared_observer:
        return await run_in_pod_engine_async(flow, flow_run, call_parameters, before_final)
    return await run_in_engine_async(flow, flow_run, call_parameters, before_final)


async def execute_flow_run(
    client: PrefectClient, runner: PipelineRunner, flow_run: FlowRun
) -> State[Any] | None:
    """Resolve inputs, run `flow_run` in this process, store its last log lines, clean up;
    None if it never started.

    An `async def` pipeline runs on the current event loop; a `def` pipeline runs in a thread
    of its own (the sync engine blocks), keeping the loop responsive.
    """
    try:
        parameters = await runner.prepare(client, flow_run)
        if parameters is None:
            return None
        if runner.flow.isasync:
            return await run_pipeline_async(runner.flow, flow_run, parameters)
        return await asyncio.to_thread(run_pipeline_sync, runner.flow, flow_run, parameters)
    finally:
        await flush_run_logs(client, flow_run.id)
        runner.cleanup(flow_run)
