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
import functools
import inspect
import sys
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.flow_engine import run_flow
from prefect.flows import load_flow_from_flow_run
from prefect.logging import get_logger
from prefect.states import Failed, State
from prefect.utilities.engine import propose_state

from prefect_pipedeploy.records import record_outputs, record_outputs_sync

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


def with_output_recording(flow: Flow[..., Any]) -> Flow[..., Any]:
    """A copy of `flow` that records its outputs on the run before the run completes.

    Recording inside the run means a Completed execution always has its outputs readable.
    """
    fn = flow.fn
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_and_record(*args: Any, **kwargs: Any) -> Any:
            value = await fn(*args, **kwargs)
            context = FlowRunContext.get()
            assert context is not None and context.flow_run is not None
            await record_outputs(context.client, context.flow_run.id, outputs_of(value))
            return value

    else:

        @functools.wraps(fn)
        def run_and_record(*args: Any, **kwargs: Any) -> Any:
            value = fn(*args, **kwargs)
            context = FlowRunContext.get()
            assert context is not None and context.flow_run is not None
            record_outputs_sync(context.client, context.flow_run.id, outputs_of(value))
            return value

    wrapped = copy.copy(flow)
    wrapped.fn = run_and_record
    return wrapped


def run_pipeline_sync(
    flow: Flow[..., Any], flow_run: FlowRun, parameters: dict[str, Any] | None = None
) -> State[Any]:
    """Run a `def` pipeline's flow run through the sync engine; blocks this thread."""
    state = run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")
    assert isinstance(state, State)
    return state


async def run_pipeline_async(
    flow: Flow[..., Any], flow_run: FlowRun, parameters: dict[str, Any] | None = None
) -> State[Any]:
    """Run an `async def` pipeline's flow run on the current event loop."""
    state = await run_flow(  # type: ignore[misc]
        flow, flow_run=flow_run, parameters=parameters, return_type="state"
    )
    assert isinstance(state, State)
    return state


async def execute_flow_run(flow: Flow[..., Any], flow_run: FlowRun) -> State[Any]:
    """Run `flow_run` with `flow` (as returned by `with_output_recording`) in this process.

    An `async def` pipeline runs on the current event loop; a `def` pipeline runs in a thread
    of its own (the sync engine blocks), keeping the loop responsive.
    """
    if flow.isasync:
        return await run_pipeline_async(flow, flow_run)
    return await asyncio.to_thread(run_pipeline_sync, flow, flow_run)


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
        await execute_flow_run(with_output_recording(flow), flow_run)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m prefect_pipedeploy.execution <flow-run-id>", file=sys.stderr)
        return 2
    return asyncio.run(_main(UUID(args[0])))


if __name__ == "__main__":
    sys.exit(main())
