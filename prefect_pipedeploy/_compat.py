"""The one module that touches Prefect's private API or its raw HTTP endpoints.

For: every use prefect-pipedeploy makes of what Prefect does not promise to keep: the flow-run
suspension registry and observer (one observer per pod instead of one per run), flow engines with
that observer swapped out and a call right before a run's final state, the API log sink (a
process's own sending of its runs' log lines), the raw `/variables/filter` and `/flow_runs/`
endpoints, the status
codes of concurrency leases, a 503 raised before Prefect's client sleeps on it, a client that does
not retry a refused connection (Prefect's retries it for a minute once connected), the `_sync=True`
switch of Prefect's dual sync/async methods, and the private hooks and attributes of `BaseWorker`
(wrapped in `WorkerBase`, which the `pipedeploy` worker derives from). What the Prefect server
the stack starts changes in its own process is `_compat_server`'s. Each function or class says
the Prefect version it was checked against (`CHECKED_AGAINST`); `tests/unit/test_compat.py` pins
the shapes relied on here, so a Prefect upgrade fails there first, naming what changed
(`tests/unit/test_compat_run_logs.py` for the final-state call and the log sink). Not for: anything
Prefect offers publicly (use the public API where it exists, elsewhere).

Upgrading Prefect: run `pytest tests/unit/test_compat.py tests/integration/test_compat_api.py`,
fix what it names here, then raise `CHECKED_AGAINST`.
"""

from __future__ import annotations

import abc
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

import certifi
import httpx
from prefect._flow_run_suspension import (
    FlowRunSuspensionRequest,
    mark_flow_run_suspension_requested,
    register_flow_run_suspension_request,
)
from prefect._internal.observers import FlowRunSuspendingObserver
from prefect.blocks.core import Block
from prefect.client.schemas.actions import FlowRunCreate
from prefect.client.schemas.objects import FlowRun, FlowRunPolicy, State, Variable
from prefect.exceptions import Abort
from prefect.flow_engine import AsyncFlowRunEngine, FlowRunEngine
from prefect.logging.handlers import set_api_log_sink
from prefect.states import Submitting
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient
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


# ---------------------------------------------------------------------------------------------
# Flow engines that call back right before a run's final state (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's engine proposes a run's final state in `set_state` (from `handle_success`,
# `handle_exception`, `handle_timeout`, `handle_crash`, `handle_cancellation`), then runs the
# state's hooks and logs "Finished in state ...". The engines here call `before_final` with the
# engine's client and the run's id right before that proposal, so a process can store the run's
# log lines before the run is seen final. No public API offers that moment.

#: Called in the engine's thread with its sync client; must not raise.
BeforeFinal = Callable[["SyncPrefectClient", UUID], None]
#: Awaited on the engine's loop with its async client; must not raise.
ABeforeFinal = Callable[["PrefectClient", UUID], Awaitable[None]]


def _about_to_be_final(engine: Any, state: State[Any]) -> bool:
    return bool(state.is_final() and not engine.short_circuit and engine.flow_run is not None)


# Runs ended elsewhere (cancelled while their `def` pipeline's thread, which Python cannot stop,
# runs on): their engines propose no more states, so a result that comes after the cancel is
# discarded instead of overwriting Cancelled (Prefect accepts Completed over Cancelled).
_ENDED_ELSEWHERE: dict[UUID, State[Any]] = {}


def discard_engine_states(flow_run_id: UUID, final: State[Any]) -> None:
    """From now on the engine running `flow_run_id` in this process proposes no state: it takes
    `final` as its run's state instead (the run was ended by someone else; 3.9.1)."""
    _ENDED_ELSEWHERE[flow_run_id] = final


def engine_states_discarded(flow_run_id: UUID) -> bool:
    """Whether the run was ended elsewhere (`discard_engine_states`): what it returns now is
    discarded, outputs included."""
    return flow_run_id in _ENDED_ELSEWHERE


def forget_discarded_states(flow_run_id: UUID) -> None:
    """The run's engine is done: stop discarding its states (and forget that it was created
    Running, when its engine never began)."""
    _ENDED_ELSEWHERE.pop(flow_run_id, None)
    _CREATED_RUNNING.discard(flow_run_id)


def _ended_elsewhere(engine: Any) -> State[Any] | None:
    """The state a run ended elsewhere has, set on its engine as if proposed (3.9.1: the engine
    reads its state from `flow_run.state`; leaving it Running would run the flow again)."""
    flow_run = engine.flow_run
    final = _ENDED_ELSEWHERE.get(flow_run.id) if flow_run is not None else None
    if final is not None:
        flow_run.state, flow_run.state_name, flow_run.state_type = final, final.name, final.type
    return final


async def create_flow_run_plain(client: PrefectClient, body: FlowRunCreate) -> FlowRun:
    """`POST /flow_runs/` with `body`, for a run of a deployment (3.9.1: `FlowRunCreate`'s
    `deployment_id` is deprecated but kept; the server adds the deployment's labels, finds the
    queue by `work_pool_name` and `work_queue_name`, keys idempotency by flow, and skips the
    job-variables check of the create-from-deployment route)."""
    response = await client.request(
        "POST", "/flow_runs/", json=body.model_dump(mode="json", exclude_unset=True)
    )
    return FlowRun.model_validate(response.json())


# Runs created already Running (a pod's direct calls): their engine's first proposal, Running,
# is the state they have; it is not sent again, one write fewer per execution.
_CREATED_RUNNING: set[UUID] = set()


def created_running(flow_run_id: UUID) -> None:
    """The run was created in a Running state: its engine does not propose Running again
    (3.9.1: `begin_run` proposes Running and loops while the answer is Pending)."""
    _CREATED_RUNNING.add(flow_run_id)


def _already_running(engine: Any, state: State[Any]) -> State[Any] | None:
    """The run's own state when the engine proposes the Running it was created with."""
    flow_run = engine.flow_run
    if flow_run is None or flow_run.id not in _CREATED_RUNNING or not state.is_running():
        return None
    _CREATED_RUNNING.discard(flow_run.id)
    current = flow_run.state
    return current if current is not None and current.is_running() else None


class _FlowRunEngine(FlowRunEngine[Any, Any]):
    before_final: BeforeFinal | None = None

    def set_state(self, state: State[Any], force: bool = False) -> State[Any]:
        if (final := _ended_elsewhere(self)) is not None:
            return final
        if (running := _already_running(self, state)) is not None:
            self._capture_state_report(running)  # what `set_state` does after its proposal
            self._telemetry.update_state(running)
            self.call_hooks(running)
            return running
        if self.before_final is not None and _about_to_be_final(self, state):
            assert self.flow_run is not None
            self.before_final(self.client, self.flow_run.id)
        return super().set_state(state, force)


class _AsyncFlowRunEngine(AsyncFlowRunEngine[Any, Any]):
    before_final: ABeforeFinal | None = None

    async def set_state(self, state: State[Any], force: bool = False) -> State[Any]:
        if (final := _ended_elsewhere(self)) is not None:
            return final
        if (running := _already_running(self, state)) is not None:
            self._capture_state_report(running)  # what `set_state` does after its proposal
            self._telemetry.update_state(running)
            await self.call_hooks(running)
            return running
        if self.before_final is not None and _about_to_be_final(self, state):
            assert self.flow_run is not None
            await self.before_final(self.client, self.flow_run.id)
        return await super().set_state(state, force)


# The engine's PATCH of a run it did not create (3.9.1: `initialize_run` writes the flow's
# version and the run's retry policy, its retries and retry delay taken from the flow where the
# run has none, before it begins the run). A run created with both already (a pod's direct call,
# `engine_fields`) is PATCHed with what it has: a pod's engine does not send that write.


def engine_fields(flow: Flow[..., Any]) -> dict[str, Any] | None:
    """The fields Prefect's engine PATCHes onto a run of `flow` before it begins it, for the
    run's create (`FlowRunCreate` takes both); None when the retry policy cannot hold the flow's
    retry delay (a list, a fraction of a second): the engine then writes it as before."""
    delay = flow.retry_delay_seconds
    if not isinstance(delay, (int, float)) or delay != int(delay):
        return None
    policy = FlowRunPolicy(retries=flow.retries, retry_delay=int(delay))
    return {"flow_version": flow.version, "empirical_policy": policy}


def _as_given(flow_run: FlowRun) -> dict[str, Any]:
    """What the engine's PATCH would have to write to change nothing on the run as given."""
    return {
        "flow_version": flow_run.flow_version,
        "empirical_policy": flow_run.empirical_policy.model_copy(deep=True),
    }


class _SamePatchSkipped:
    """A pod engine's client until its run's first PATCH (`_PodEngine.client`): a PATCH of
    exactly the flow version and retry policy the run had when the engine got it is not sent;
    any other goes through. Everything else is the engine's own client."""

    def __init__(self, client: Any, engine: _PodEngine) -> None:
        self._client = client
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _same(self, flow_run_id: UUID, fields: dict[str, Any]) -> bool:
        engine = self._engine
        as_given, engine.as_given = engine.as_given, None  # the first PATCH only
        flow_run = engine.flow_run
        return (
            as_given is not None
            and flow_run is not None
            and flow_run.id == flow_run_id
            and (fields == as_given)
        )


class _SyncSamePatchSkipped(_SamePatchSkipped):
    def update_flow_run(self, flow_run_id: UUID, **fields: Any) -> Any:
        if self._same(flow_run_id, fields):
            return None  # the engine discards the answer of its PATCH (3.9.1)
        return self._client.update_flow_run(flow_run_id, **fields)


class _AsyncSamePatchSkipped(_SamePatchSkipped):
    async def update_flow_run(self, flow_run_id: UUID, **fields: Any) -> Any:
        if self._same(flow_run_id, fields):
            return None
        return await self._client.update_flow_run(flow_run_id, **fields)


class _PodEngine:
    """What a pod's engines share: the run as given, until the engine's first PATCH of it."""

    as_given: dict[str, Any] | None = None
    flow_run: FlowRun | None


class _PodFlowRunEngine(_WithoutSuspensionObserver, _FlowRunEngine, _PodEngine):
    @property
    def client(self) -> SyncPrefectClient:
        client = super().client
        if self.as_given is None:
            return client
        return cast("SyncPrefectClient", _SyncSamePatchSkipped(client, self))


class _PodAsyncFlowRunEngine(_WithoutSuspensionObserver, _AsyncFlowRunEngine, _PodEngine):
    @property
    def client(self) -> PrefectClient:
        client = super().client
        if self.as_given is None:
            return client
        return cast("PrefectClient", _AsyncSamePatchSkipped(client, self))


def _drive_sync(engine: _FlowRunEngine) -> State[Any]:
    """The driving loop of `prefect.flow_engine.run_flow_sync` (3.9.1)."""
    with engine.start():
        while engine.is_running():
            with engine.run_context():
                _ = engine.call_flow_fn()  # the result is kept on the engine
    return engine.state


async def _drive_async(engine: _AsyncFlowRunEngine) -> State[Any]:
    """The driving loop of `prefect.flow_engine.run_flow_async` (3.9.1)."""
    async with engine.start():
        while engine.is_running():
            async with engine.run_context():
                _ = await engine.call_flow_fn()  # the result is kept on the engine
    return engine.state


def run_in_engine_sync(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any],
    before_final: BeforeFinal | None = None,
) -> State[Any]:
    """Run a `def` flow's run to its final state in this thread, as `run_flow` does, calling
    `before_final` right before the final state is proposed (3.9.1)."""
    engine = _FlowRunEngine(flow=flow, flow_run=flow_run, parameters=parameters)
    engine.before_final = before_final
    return _drive_sync(engine)


async def run_in_engine_async(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any],
    before_final: ABeforeFinal | None = None,
) -> State[Any]:
    """Run an `async def` flow's run to its final state on this loop, as `run_flow` does,
    awaiting `before_final` right before the final state is proposed (3.9.1)."""
    engine = _AsyncFlowRunEngine(flow=flow, flow_run=flow_run, parameters=parameters)
    engine.before_final = before_final
    return await _drive_async(engine)


def run_in_pod_engine_sync(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any],
    before_final: BeforeFinal | None = None,
) -> State[Any]:
    """`run_in_engine_sync` without a per-run suspension observer (a pod's shared one watches
    the run, see `watch_suspension`) and without the engine's PATCH when it would write what
    the run has (`engine_fields`; 3.9.1)."""
    engine = _PodFlowRunEngine(flow=flow, flow_run=flow_run, parameters=parameters)
    engine.before_final, engine.as_given = before_final, _as_given(flow_run)
    return _drive_sync(engine)


async def run_in_pod_engine_async(
    flow: Flow[..., Any],
    flow_run: FlowRun,
    parameters: dict[str, Any],
    before_final: ABeforeFinal | None = None,
) -> State[Any]:
    """`run_in_engine_async` without a per-run suspension observer, nor a PATCH of what the
    run has (`run_in_pod_engine_sync`; 3.9.1)."""
    engine = _PodAsyncFlowRunEngine(flow=flow, flow_run=flow_run, parameters=parameters)
    engine.before_final, engine.as_given = before_final, _as_given(flow_run)
    return await _drive_async(engine)


# ---------------------------------------------------------------------------------------------
# The API log sink (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------


def install_api_log_sink(sink: Callable[[dict[str, Any]], None] | None) -> None:
    """Hand every line Prefect's API log handler prepares (a `LogCreate` dict with a
    `__payload_size__` key) to `sink` instead of Prefect's `APILogWorker`; None restores it.
    `prefect.logging.handlers.set_api_log_sink` is undocumented: Prefect's process-pool task
    runner uses it to forward its workers' lines (3.9.1)."""
    set_api_log_sink(sink)


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
# A client that does not wait for a server that is away (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Once a Prefect client has connected, it retries a refused connection for about a minute
# (`PrefectHttpxAsyncClient.send`: 2, 4, 8, 16, 32 s). A process that answers callers (the
# gateway) must tell them at once that the server is away instead.


class ApiAway(httpx.TransportError):
    """The Prefect API refused the connection or did not accept it in time (a server that is
    down or restarting). Not one of the errors Prefect's client retries."""


class _FailFastTransport(httpx.AsyncBaseTransport):
    """httpx's transport, with a refused or timed-out connection raised as `ApiAway`."""

    def __init__(self, **options: Any) -> None:
        self._inner = httpx.AsyncHTTPTransport(**options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiAway(
                f"the Prefect API did not accept a connection: {exc}", request=request
            ) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def fail_fast_client() -> PrefectClient:
    """A client of the current API (PREFECT_API_URL) that raises `ApiAway` at once when the
    server does not accept a connection, where Prefect's would retry for a minute; every other
    failure is retried as Prefect does. TLS as Prefect's client sets it up (3.9.1)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_ENABLE_HTTP2,
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    )

    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        verify: ssl.SSLContext = ssl.create_default_context()
        verify.check_hostname = False
        verify.verify_mode = ssl.CERT_NONE
    else:
        verify = ssl.create_default_context(
            cafile=PREFECT_API_SSL_CERT_FILE.value() or certifi.where()
        )
    transport = _FailFastTransport(
        verify=verify,
        http2=PREFECT_API_ENABLE_HTTP2.value(),
        retries=0,
        # Prefect's own pool limits (a transport given to httpx brings its own pool)
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=25),
    )
    return get_client(httpx_settings={"transport": transport})


def wrap_transports(
    client: PrefectClient,
    sync_client: SyncPrefectClient,
    wrap_async: Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport],
    wrap_sync: Callable[[httpx.BaseTransport], httpx.BaseTransport],
) -> None:
    """Put a wrapper around every transport of both clients' httpx clients (their private
    `_client`; httpx's private `_transport` and `_mounts`, the proxies' transports), keeping
    the transports Prefect built, with its TLS, HTTP/2 and pool settings (3.9.1)."""
    http, sync_http = client._client, sync_client._client
    http._transport = wrap_async(http._transport)
    http._mounts = {
        pattern: None if mounted is None else wrap_async(mounted)
        for pattern, mounted in http._mounts.items()
    }
    sync_http._transport = wrap_sync(sync_http._transport)
    sync_http._mounts = {
        pattern: None if mounted is None else wrap_sync(mounted)
        for pattern, mounted in sync_http._mounts.items()
    }


# ---------------------------------------------------------------------------------------------
# A 503 answered at once (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's client sleeps after a 503 before it looks at its retry count
# (`PrefectHttpxAsyncClient._send_with_retry`: 2 s after the first), so even with its retries
# off a call answered 503 returns about 2 s later. A caller with quicker retries of its own
# (`prefect_api.runs.create_run`) has the 503 raised at once instead, by an httpx response hook
# on the client's private `_client`.


class ServerBusy(Exception):
    """The API answered 503 (a SQLite server whose database is locked) inside `busy_raised`."""


_raise_busy: ContextVar[bool] = ContextVar("pipedeploy_raise_busy", default=False)


async def _raise_if_busy(response: httpx.Response) -> None:
    if _raise_busy.get() and response.status_code == 503:
        raise ServerBusy(f"{response.request.method} {response.request.url.path} answered 503")


@contextmanager
def busy_raised(client: PrefectClient) -> Generator[None, None, None]:
    """Inside the block, a 503 answer to this task's calls through `client` raises
    `ServerBusy` at once, before Prefect's client sleeps on it; other tasks using the client
    keep Prefect's behaviour (3.9.1)."""
    hooks = client._client.event_hooks["response"]
    if _raise_if_busy not in hooks:
        hooks.append(_raise_if_busy)
    token = _raise_busy.set(True)
    try:
        yield
    finally:
        _raise_busy.reset(token)


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

        responses = await self._get_scheduled_flow_runs()
        self._last_polled_time = datetime.datetime.now(datetime.timezone.utc)
        return responses

    def is_submitting(self, flow_run_id: UUID) -> bool:
        """Whether the run is being submitted or run by this worker right now."""
        return flow_run_id in self._submitting_flow_run_ids

    def submitting_runs(self) -> set[UUID]:
        """The runs this worker is submitting or running right now."""
        return set(self._submitting_flow_run_ids)

    async def submit_runs(self, responses: list[WorkerFlowRunResponse]) -> list[FlowRun]:
        """Submit runs the way BaseWorker does (claim, then `run` in the runs task group)."""
        return await self._submit_scheduled_flow_runs(flow_run_response=responses)

    async def emit_started_event(self) -> None:
        """Emit `prefect.worker.started` and keep it as the related event of later ones."""
        self._started_event = await self._emit_worker_started_event()

    def on_run_released(self, flow_run_id: UUID) -> None:
        """Called on every path by which a submitted run ends or is not started (override)."""

    async def claim_run(self, flow_run: FlowRun) -> bool:
        """Move a run to Pending before `run` starts it; False when it is not ours to start
        (override; BaseWorker's own claim by default)."""
        return await super()._propose_pending_state(flow_run)

    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        # BaseWorker's claim in `_submit_run` goes through `claim_run`
        return await self.claim_run(flow_run)

    def claim_message(self) -> str | None:
        """The message of the Pending states with which this worker claims a run (override;
        none by default)."""
        return None

    async def _propose_submitting_state(self, flow_run: FlowRun) -> None:
        # BaseWorker moves a run it claimed on to a Pending state named "Submitting" before
        # `run`; that state replaces the claim's, so it carries the claim's message too (3.9.1).
        try:
            submitting: State[Any] = Submitting(message=self.claim_message())
            await propose_state(self.client, submitting, flow_run_id=flow_run.id)
        except Abort:
            pass
        except Exception:
            self._logger.debug(
                "Failed to update flow run '%s' to Submitting state", flow_run.id, exc_info=True
            )

    def crash_reported(self, flow_run_id: UUID) -> bool:
        """Whether `run` reported this run's crash itself, with its cause (override; called once
        per run that `run` ended with a non-zero status code)."""
        return False

    async def _propose_crashed_state(
        self, flow_run: FlowRun, message: str, client: PrefectClient | None = None
    ) -> None:
        # BaseWorker proposes Crashed ("infrastructure exited with non-zero status code") after
        # `run` returns a non-zero code. When `run` reported the crash itself and re-queued the
        # run for a retry since, that second Crashed state would end the retry (3.9.1).
        if self.crash_reported(flow_run.id):
            return
        await super()._propose_crashed_state(flow_run, message, client=client)

    async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
        # BaseWorker labels a run with its worker before `run`; when that call failed (a busy
        # server's 503 after the client's retries) it crashed the run, "Failed to submit flow
        # run to infrastructure". The labels are not worth an execution: log and go on.
        try:
            await super()._give_worker_labels_to_flow_run(flow_run_id)
        except Exception as exc:
            self._logger.warning("Could not label flow run %s: %s", flow_run_id, exc)

    def _release_limit_slot(self, flow_run_id: UUID) -> None:
        super()._release_limit_slot(flow_run_id)
        self.on_run_released(flow_run_id)
