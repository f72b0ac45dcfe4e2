"""Flow runs as the project creates and ends them: an execution's start and its forced end.

For: `when_api_answers` (wait, bounded, for an API that is restarting: a process's first call must
not fail because the server is away for a moment), `create_execution` (seal the secret inputs,
create the run, discard the sealed values if the create fails: the one way the gateway and the SDK
start an execution), `create_run` (the create itself; `create_deployment_run`, the same run
through Prefect's plain create route where it can, `plain_create`: a pod's direct calls),
`fail_run` / `crash_run` / `cancel_run` (mark a run Failed, Crashed or Cancelled with a
message, leaving a run that is already final alone), `requeue_run` and
`runs_by_idempotency_key` (what a dead pod held), and `request_cancel` (the Cancelling
state the UI's Cancel writes). Not for: running the pipeline (`engine`), deciding retries
(`worker`), the gateway's 429 check and uploaded files (`gateway.service`).

`create_run` retries a 503 (a SQLite server whose database is locked) within milliseconds,
`busy.retry_busy`. Other calls keep Prefect's behaviour.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from uuid import UUID

import anyio
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import FlowRunCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterIdempotencyKey,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import Event
from prefect.exceptions import Abort, ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled, Cancelling, Crashed, Failed, Scheduled, to_state_create
from prefect.utilities.engine import propose_state

from prefect_pipedeploy._compat import create_flow_run_plain
from prefect_pipedeploy.exceptions import ServerUnavailable
from prefect_pipedeploy.prefect_api.busy import retry_busy
from prefect_pipedeploy.prefect_api.sealed import discard, seal_inputs, sealed_keys, sealed_tag
from prefect_pipedeploy.spec import DeploymentSpec

#: How long a process waits for an API that does not answer before it gives up: about as long
#: as Prefect's client retries a refused connection once it has connected (2 + 4 + ... + 32 s).
API_ANSWER_WAIT_S = 60.0
API_ANSWER_POLL_S = 0.5


def run_id_of(event: Event) -> UUID | None:
    """The flow run an event of Prefect's is about (`prefect.flow-run.<id>`), if any."""
    kind, _, ident = event.resource.id.rpartition(".")
    if kind != "prefect.flow-run":
        return None
    try:
        return UUID(ident)
    except ValueError:
        return None


async def when_api_answers(client: PrefectClient, timeout_s: float = API_ANSWER_WAIT_S) -> None:
    """Return once the API answers its health check; raise `ServerUnavailable` after
    `timeout_s`. Prefect's client retries a refused connection only once it has connected, so
    a fresh process whose first call meets a restarting server would fail at once: it waits
    here first."""
    deadline = time.monotonic() + timeout_s
    while (error := await client.api_healthcheck()) is not None:
        if time.monotonic() >= deadline:
            raise ServerUnavailable(
                f"the Prefect API at {client.api_url} did not answer for {timeout_s:g} s "
                f"({type(error).__name__}: {error}); check that the server runs"
            ) from error
        await asyncio.sleep(API_ANSWER_POLL_S)


async def create_run(client: PrefectClient, deployment_id: UUID, **kwargs: Any) -> FlowRun:
    """`client.create_flow_run_from_deployment(deployment_id, **kwargs)`, 503s retried fast.

    Raises `ObjectNotFound` when the deployment does not exist (Prefect's client raises a bare
    404 status error there).
    """
    try:
        return await retry_busy(
            client, lambda: client.create_flow_run_from_deployment(deployment_id, **kwargs)
        )
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code == 404:
            raise ObjectNotFound(http_exc=exc) from exc
        raise


def plain_create(
    deployment: DeploymentResponse,
    parameters: Mapping[str, Any],
    tags: Sequence[str],
    state: State[Any] | None,
    idempotency_key: str | None,
    engine_fields: Mapping[str, Any] | None = None,
) -> FlowRunCreate | None:
    """The body with which Prefect's plain create route (`_compat.create_flow_run_plain`) makes
    the same run as its create-from-deployment route would for these arguments; None where it
    cannot, and that route must make it.

    The same: the deployment's default parameters under the given ones, its tags with the given
    ones, its flow, work pool and queue. Not made here: a deployment with a version (the plain
    route cannot record it on the run), parameters with values the server would hydrate
    (`__prefect_kind`), a deployment without a work queue, a deployment that enforces its
    parameter schema (the server checks it on that route and answers a refusal as it always
    has; checking it here would import Prefect's schema validation into every pod and
    execution process, 20 MiB of RSS, past the 128 MiB some deployments request; the SDK's
    deployments leave enforcement off, `prefect deploy`'s turn it on). What the other route
    adds is its check of the deployment's job variables against the pool's schema, about 40 ms
    of the server's time for the `pipedeploy` pool, inside the create's database transaction
    (issue 14); a deployment's job variables were checked when it was created or updated.
    `engine_fields` (`_compat.engine_fields`: the flow version and retry policy the engine
    would PATCH) go into the body too; the other route cannot record them."""
    if deployment.version is not None or deployment.enforce_parameter_schema:
        return None
    if not deployment.work_pool_name or not deployment.work_queue_name:
        return None
    merged = {**(deployment.parameters or {}), **parameters}
    if HYDRATED in json.dumps(merged, default=str):
        return None
    return FlowRunCreate(
        flow_id=deployment.flow_id,
        deployment_id=deployment.id,
        parameters=merged,
        tags=sorted({*deployment.tags, *tags}),
        state=to_state_create(state or Scheduled()),
        idempotency_key=idempotency_key,
        work_pool_name=deployment.work_pool_name,
        work_queue_name=deployment.work_queue_name,
        **(engine_fields or {}),
    )


#: What `create_deployment_run` passes on to the plain route (`plain_create`).
PLAIN_ARGUMENTS = frozenset({"parameters", "tags", "state", "idempotency_key", "engine_fields"})

#: The key of a parameter value Prefect's server replaces when it creates a run (a workspace
#: variable, a Jinja template, JSON text).
HYDRATED = "__prefect_kind"


async def create_deployment_run(
    client: PrefectClient, deployment: DeploymentResponse, **kwargs: Any
) -> FlowRun:
    """`create_run(client, deployment.id, **kwargs)`, made through Prefect's plain create route
    where that makes the same run (`plain_create`): about 40 ms less of the server's time.
    Arguments other than `parameters`, `tags`, `state`, `idempotency_key` and `engine_fields`
    take the deployment route, which drops `engine_fields` (the engine PATCHes them)."""
    body = None
    engine_fields = kwargs.pop("engine_fields", None)
    if not set(kwargs) - PLAIN_ARGUMENTS:
        body = plain_create(
            deployment,
            kwargs.get("parameters") or {},
            kwargs.get("tags") or [],
            kwargs.get("state"),
            kwargs.get("idempotency_key"),
            engine_fields,
        )
    if body is None:
        return await create_run(client, deployment.id, **kwargs)
    return await retry_busy(client, lambda: create_flow_run_plain(client, body))


async def create_execution(
    client: PrefectClient,
    deployment_id: UUID,
    spec: DeploymentSpec,
    parameters: Mapping[str, Any],
    tags: list[str],
    state: State[Any] | None = None,
    idempotency_key: str | None = None,
    deployment: DeploymentResponse | None = None,
    engine_fields: Mapping[str, Any] | None = None,
) -> FlowRun:
    """Start an execution of a deployment: seal its secret inputs (`sealed.seal_inputs`),
    create the flow run (`create_run`; Scheduled, or `state`: a pod's direct call creates it
    Running; given the `deployment` as read, `create_deployment_run`, with `engine_fields`
    where its plain route makes the run), and, if the create
    fails, discard the sealed values again so that no
    `pipedeploy-sealed-*` block outlives a run that was never made. With `idempotency_key`,
    a second create with the same key gives back the run the first one made (Prefect's rule):
    a gateway that lost a pod's answer creates no second run.

    Raises what `create_run` raises: `ObjectNotFound` when the deployment is gone,
    `PrefectHTTPStatusError` when the API refuses the run.
    """
    sealed: dict[str, Any] = {}
    try:
        sealed = await seal_inputs(client, spec, parameters)
        # each sealed value is named in a tag of its run, so a value whose run is deleted
        # before it ran is found and deleted (`sealed.sweep_sealed`)
        tags = [*tags, *(sealed_tag(key) for key in sealed_keys(sealed))]
        create = dict(parameters=sealed, tags=tags, state=state, idempotency_key=idempotency_key)
        if deployment is not None and deployment.id == deployment_id:
            return await create_deployment_run(
                client, deployment, **create, engine_fields=engine_fields
            )
        return await create_run(client, deployment_id, **create)
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled caller still cleans up
            await discard(client, sealed_keys(sealed))
        raise


async def fail_run(
    client: PrefectClient, flow_run_id: UUID, message: str, *, over_crash: bool = False
) -> bool:
    """Mark a run Failed with `message` (the pipeline failed outside Prefect's engine: its
    inputs, its timeout, its loading). Returns False, and leaves the run alone, when it is
    already final (or gone).

    `over_crash=True` also replaces a Crashed state: when this process cancels a run's engine
    (its timeout), Prefect's engine ends the run Crashed, but the cause to show is the caller's.
    """
    replaceable = (StateType.CRASHED,) if over_crash else ()
    return await _end_run(client, flow_run_id, Failed(message=message), replaceable)


async def crash_run(client: PrefectClient, flow_run_id: UUID, message: str) -> bool:
    """Mark a run Crashed with `message` (its process or pod died under it). Returns False, and
    leaves the run alone, when it is already final (or gone)."""
    return await _end_run(client, flow_run_id, Crashed(message=message))


async def cancel_run(client: PrefectClient, flow_run_id: UUID, message: str) -> bool:
    """Mark a run Cancelled with `message` (its worker stopped it as asked). Returns False, and
    leaves the run alone, when it is already final (or gone)."""
    return await _end_run(client, flow_run_id, Cancelled(message=message))


async def request_cancel(client: PrefectClient, flow_run_id: UUID) -> State[Any]:
    """Ask for a run to be cancelled, as the Prefect UI and `prefect flow-run cancel` do: a
    Cancelling state, which its worker acts on. Prefect ends a run that waits to start
    Cancelled at once, without a word: it gets one here. Returns the state the run is in now;
    raises `Abort` when it is already final."""
    state = await propose_state(client, Cancelling(message=CANCEL_REQUESTED), flow_run_id)
    if state.type == StateType.CANCELLED and not state.message:
        cancelled: State[Any] = Cancelled(message=CANCELLED_BEFORE_START)
        await client.set_flow_run_state(flow_run_id, cancelled, force=True)
        return cancelled
    return state


CANCEL_REQUESTED = "Cancel requested"
CANCELLED_BEFORE_START = "Cancelled on request before it started"


async def _end_run(
    client: PrefectClient,
    flow_run_id: UUID,
    state: State[Any],
    replaceable: tuple[StateType, ...] = (),
) -> bool:
    try:
        # The server lets a final run be set Failed again (only Crashed is refused): look first.
        current = (await client.read_flow_run(flow_run_id)).state
        if current is not None and current.is_final() and current.type not in replaceable:
            return False
        accepted = await propose_state(client, state, flow_run_id=flow_run_id)
    except (Abort, ObjectNotFound):  # Abort: it reached a final state meanwhile
        return False
    return accepted.type == state.type


async def runs_by_idempotency_key(
    client: PrefectClient, deployment_id: UUID, keys: Collection[str]
) -> set[UUID]:
    """The deployment's runs created with one of the idempotency `keys` (a dead pod's direct
    calls, `runtimes.low_latency`); none for keys whose create never happened."""
    if not keys:
        return set()
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            idempotency_key=FlowRunFilterIdempotencyKey(any_=sorted(keys))
        ),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
    )
    return {run.id for run in runs}


async def requeue_run(
    client: PrefectClient, flow_run_id: UUID, message: str, crashed: str | None = None
) -> bool:
    """Put a run that was claimed but never began back in the queue (Scheduled, named
    "Requeued", due now), so another pod or worker starts it. A run that did begin (Running)
    is marked Crashed with `crashed` (default: `message`) instead, and a final one is left
    alone. True when it was re-queued."""
    try:
        current = (await client.read_flow_run(flow_run_id)).state
    except ObjectNotFound:
        return False
    if current is None or current.type not in (StateType.PENDING, StateType.SCHEDULED):
        await crash_run(client, flow_run_id, crashed or message)
        return False
    await client.set_flow_run_state(
        flow_run_id, Scheduled(name="Requeued", message=message), force=True
    )
    return True
