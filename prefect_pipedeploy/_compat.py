"""The one module that touches Prefect's private API or its raw HTTP endpoints.

For: every use prefect-pipedeploy makes of what Prefect does not promise to keep: the flow-run
suspension registry and observer (one observer per pod instead of one per run), flow engines
with that observer swapped out, the raw `/variables/filter` endpoint, the status codes of
concurrency leases, the `_sync=True` switch of Prefect's dual sync/async methods, and the
private hooks and attributes of `BaseWorker` (wrapped in `WorkerBase`, which the `pipedeploy`
worker derives from). Each function or class says the Prefect version it was checked against
(`CHECKED_AGAINST`); `tests/unit/test_compat.py` pins the shapes relied on here, so a Prefect
upgrade fails there first, naming what changed. Not for: anything Prefect offers publicly (use
the public API where it exists, elsewhere).

Upgrading Prefect: run `pytest tests/unit/test_compat.py tests/integration/test_compat_api.py`,
fix what it names here, then raise `CHECKED_AGAINST`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

import httpx
from prefect._flow_run_suspension import (
    FlowRunSuspensionRequest,
    mark_flow_run_suspension_requested,
    register_flow_run_suspension_request,
)
from prefect._internal.observers import FlowRunSuspendingObserver
from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun, State, Variable
from prefect.flow_engine import AsyncFlowRunEngine, FlowRunEngine
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.responses import WorkerFlowRunResponse
    from prefect.flows import Flow

#: The Prefect release every function here was last checked against.
CHECKED_AGAINST = "3.9.1"

# ---------------------------------------------------------------------------------------------
# Flow-run suspension: one observer for all the runs of a pod (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's flow engine starts, for every run of a deployment, a thread with its own event loop,
# client and `/events/out` websocket that watches for the run being suspended from outside, and
# waits for its first read of the run (about 45 ms per run on 2 cores). A pod watches all its
# runs with one `FlowRunSuspendingObserver` instead, and runs them in engines that register each
# run's suspension request (so the observer can mark it) without starting an observer of their
# own. No public API does either.


@asynccontextmanager
async def shared_suspension_observer() -> AsyncIterator[FlowRunSuspendingObserver]:
    """One suspension observer (one websocket) for every run of this process; add and remove
    runs with `watch_suspension(observer, flow_run_id)`. Checked against Prefect 3.9.1."""

    def mark_suspended(flow_run_id: UUID, state: State[Any]) -> None:
        mark_flow_run_suspension_requested(flow_run_id, state)

    async with FlowRunSuspendingObserver(on_suspended=mark_suspended) as observer:
        yield observer


@contextmanager
def watch_suspension(
    observer: FlowRunSuspendingObserver, flow_run_id: UUID
) -> Generator[None, None, None]:
    """Have the shared observer watch `flow_run_id` while the block runs (3.9.1)."""
    observer.add_in_flight_flow_run_id(flow_run_id)
    try:
        yield
    finally:
        observer.remove_in_flight_flow_run_id(flow_run_id)


class _WithoutSuspensionObserver:
    """Engine mix-in: register the run's suspension request, start no observer for it (3.9.1)."""

    flow_run: FlowRun | None
    _get_flow_run_suspension_request: Callable[[], FlowRunSuspensionRequest]

    @contextmanager
    def setup_flow_run_suspension_request(self) -> Generator[FlowRunSuspensionRequest, None, None]:
        assert self.flow_run is not None
        request = self._get_flow_run_suspension_request()
        with register_flow_run_suspension_request(self.flow_run.id, request):
            request.raise_if_requested()
            yield request


class _PodFlowRunEngine(_WithoutSuspensionObserver, FlowRunEngine[Any, Any]):
    pass


class _PodAsyncFlowRunEngine(_WithoutSuspensionObserver, AsyncFlowRunEngine[Any, Any]):
    pass


def run_in_pod_engine_sync(
    flow: Flow[..., Any], flow_run: FlowRun, parameters: dict[str, Any]
) -> State[Any]:
    """Run a `def` flow's run to its final state in this thread, without a per-run suspension
    observer (the driving loop of `prefect.flow_engine.run_flow_sync`, 3.9.1)."""
    engine = _PodFlowRunEngine(flow=flow, flow_run=flow_run, parameters=parameters)
    with engine.start():
        while engine.is_running():
            with engine.run_context():
                _ = engine.call_flow_fn()  # the result is kept on the engine
    return engine.state


async def run_in_pod_engine_async(
    flow: Flow[..., Any], flow_run: FlowRun, parameters: dict[str, Any]
) -> State[Any]:
    """Run an `async def` flow's run to its final state on this loop, without a per-run
    suspension observer (the driving loop of `run_flow_async`, 3.9.1)."""
    engine = _PodAsyncFlowRunEngine(flow=flow, flow_run=flow_run, parameters=parameters)
    async with engine.start():
        while engine.is_running():
            async with engine.run_context():
                _ = await engine.call_flow_fn()  # the result is kept on the engine
    return engine.state


# ---------------------------------------------------------------------------------------------
# Variables by name prefix (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------


async def read_variables_by_prefix(
    client: PrefectClient, prefix: str, limit: int = 100
) -> list[Variable]:
    """Every variable whose name starts with `prefix` (the client has no name filter but by
    exact name: this posts `POST /variables/filter` with a `like_` name filter, 3.9.1)."""
    response = await client.request(
        "POST",
        "/variables/filter",
        json={"variables": {"name": {"like_": f"{prefix}%"}}, "limit": limit},
    )
    return [Variable.model_validate(v) for v in response.json() if v["name"].startswith(prefix)]


# ---------------------------------------------------------------------------------------------
# Concurrency leases: what the server's status codes mean (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------


def lease_refused(exc: httpx.HTTPStatusError) -> bool:
    """Whether an increment-with-lease was refused for lack of room: 423 (the limit is full) or
    422 (more slots than the limit, e.g. a cap lowered meanwhile). 3.9.1."""
    return exc.response.status_code in (423, 422)


def lease_lost(exc: httpx.HTTPStatusError) -> bool:
    """Whether a lease renewal failed because the server no longer knows the lease: 404 or 410
    (it expired, or the server restarted with in-memory lease storage). 3.9.1."""
    return exc.response.status_code in (404, 410)


# ---------------------------------------------------------------------------------------------
# Blocks, synchronously, from code that may run inside an event loop (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's block methods dispatch to their async form when called from an event loop's thread;
# the private keyword `_sync=True` keeps them synchronous (a data store used from a worker
# thread of an async caller must stay synchronous).


def load_block_sync(reference: str) -> Block:
    """`Block.load(reference)`, synchronous even inside an event loop (3.9.1)."""
    return cast(Block, Block.load(reference, _sync=True))  # type: ignore[call-arg]


def save_block_sync(block: Block, name: str, overwrite: bool = True) -> None:
    """`block.save(name, overwrite=...)`, synchronous even inside an event loop (3.9.1)."""
    block.save(name, overwrite=overwrite, _sync=True)  # type: ignore[call-arg]


def register_block_type_sync(block_type: type[Block]) -> None:
    """`block_type.register_type_and_schema()`, synchronous even inside an event loop (3.9.1)."""
    block_type.register_type_and_schema(_sync=True)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------
# BaseWorker's private hooks (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------

C = TypeVar("C", bound=BaseJobConfiguration)
V = TypeVar("V", bound=BaseVariables)
R = TypeVar("R", bound=BaseWorkerResult)


class WorkerBase(BaseWorker[C, V, R], abc.ABC):
    """`BaseWorker` with the private parts a worker with its own loops needs, under public names.

    The `pipedeploy` worker runs its own loops (event-driven pickup, pods, RAM leases) instead
    of `BaseWorker.start`'s, and reuses BaseWorker's sync with the API, its scheduled-run query,
    its submission of runs (which calls `run`) and its flow-run limiter. Abstract (`abc.ABC`
    among its bases), so Prefect does not register it as a worker type. Checked against 3.9.1.
    """

    @property
    def pool_name(self) -> str:
        """The name of the work pool this worker serves."""
        return self._work_pool_name

    @property
    def pool_id(self) -> UUID | None:
        """The id of the work pool, once the worker has synced with the API."""
        return self._work_pool.id if self._work_pool is not None else None

    @property
    def worker_logger(self) -> Any:
        """The worker's own logger (runs have `get_flow_run_logger`)."""
        return self._logger

    @property
    def has_synced(self) -> bool:
        """Whether the worker has synced with the API at least once (it knows its pool)."""
        return bool(self._has_successfully_synced)

    async def sync_with_api(self) -> None:
        """Create or read the pool, update its template, heartbeat (BaseWorker's sync)."""
        await self._sync_and_initialize()

    async def fetch_ready_runs(self) -> list[WorkerFlowRunResponse]:
        """The pool's runs due now (Scheduled, due within the prefetch), and record the poll
        for the health check."""
        import datetime

        responses = await self._get_scheduled_flow_runs()
        self._last_polled_time = datetime.datetime.now(datetime.timezone.utc)
        return responses

    def is_submitting(self, flow_run_id: UUID) -> bool:
        """Whether the run is being submitted or run by this worker right now."""
        return flow_run_id in self._submitting_flow_run_ids

    async def submit_runs(self, responses: list[WorkerFlowRunResponse]) -> list[FlowRun]:
        """Submit runs the way BaseWorker does (claim, then `run` in the runs task group)."""
        return await self._submit_scheduled_flow_runs(flow_run_response=responses)

    async def emit_started_event(self) -> None:
        """Emit `prefect.worker.started` and keep it as the related event of later ones."""
        self._started_event = await self._emit_worker_started_event()

    def on_run_released(self, flow_run_id: UUID) -> None:
        """Called on every path by which a submitted run ends or is not started (override)."""

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        super()._release_limit_slot(flow_run_id)
        self.on_run_released(flow_run_id)
