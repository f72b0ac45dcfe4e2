"""The gateway's effects: the one place that talks to the Prefect API, the data store and events.

For: `Gateway`: the endpoint table (cached, re-read on a miss or a wrong token), token checks,
storing uploads and sweeping expired ones (`uploads`), creating executions in turn (429 when
the gateway's queue or the deployment's waiting executions are full; none for a caller that has
gone), handing calls to pods (`direct`), emitting the called event, and answering with the
result, a 303 (through its `ResultAnswers`, `results`) or an error.
Not for: HTTP routing (`app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any
from uuid import UUID, uuid4

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.logging import get_logger
from prefect.settings import get_current_settings

from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.datastore.configured import aload_data_store
from prefect_pipedeploy.exceptions import (
    DataStoreError,
    PipeDeployError,
)
from prefect_pipedeploy.gateway.answers import (
    WAITING_RETRY_AFTER_S,
    GatewayError,
    _detail_of,
    execution_location,
    public_message,
)
from prefect_pipedeploy.gateway.bodies import (
    close_files,
    from_platform_client,
    json_string_fields,
    read_body,
)
from prefect_pipedeploy.gateway.direct import DirectCall, PodDoors
from prefect_pipedeploy.gateway.endpoints import Endpoint, endpoint_of, endpoint_table
from prefect_pipedeploy.gateway.inputs import (
    CheckedInputs,
    check_inputs,
    invalid_inputs_message,
    oversized_message,
    safe_filename,
)
from prefect_pipedeploy.gateway.reads import FreshReads, WaitingExecutions
from prefect_pipedeploy.gateway.results import ResultAnswers
from prefect_pipedeploy.gateway.uploads import (
    sweep_interval_s,
    sweep_uploads,
    upload_key,
)
from prefect_pipedeploy.gateway.waiting import (
    BadTokenLimiter,
    CallerGone,
    CreateQueue,
    QueueFull,
    RunWatcher,
    never_gone,
)
from prefect_pipedeploy.iomapping import file_input_marker
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.prefect_api.runs import create_execution
from prefect_pipedeploy.prefect_api.triggers import (
    emit_endpoint_called,
)
from prefect_pipedeploy.settings import env_name, get_settings
from prefect_pipedeploy.spec import Mode
from prefect_pipedeploy.tokens import token_matches

logger = get_logger("prefect_pipedeploy.gateway.service")

#: Tags of the executions the gateway creates.
RUN_TAGS = ["pipedeploy", "endpoint"]


#: How old the table of endpoints may be before a request re-reads it.
ENDPOINT_CACHE_TTL_S = 1.5


TOKEN_HEADER_HELP = "send the header 'Authorization: EndpointToken <token>'"


NO_TOKEN_YET = (
    "this endpoint has no token yet; its owner creates one with "
    "`pipedeploy endpoint token <deployment>`"
)


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _token_of(request: Request, allow_query: bool) -> tuple[str | None, bool]:
    """The token a request shows, and whether it came from `?token=`."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "endpointtoken" and value.strip():
            return value.strip(), False
        return None, False
    if allow_query and request.query_params.get("token"):
        return request.query_params["token"], True
    return None, False


class Gateway:
    """Serves the endpoint deployments of `pools` through one Prefect client."""

    def __init__(self, pools: Sequence[str], client: PrefectClient) -> None:
        self.pools = list(pools)
        self.client = client
        self.limiter = BadTokenLimiter()
        self.watcher = RunWatcher(client)
        self.queue = CreateQueue(get_settings().gateway_max_creating)
        self.doors = PodDoors(client)
        self.answers = ResultAnswers(client, self.watcher, self.data_store)
        self._table: dict[str, Endpoint] = {}
        self._loaded_at = -math.inf
        self._refresh_lock = asyncio.Lock()
        self._reported: set[str] = set()
        self._waiting = WaitingExecutions(self._count_waiting)
        # the deployments as they are now: what a create makes its run from, what a token is
        # checked against again
        self._deployments: FreshReads[UUID, DeploymentResponse] = FreshReads(client.read_deployment)

    async def close(self) -> None:
        await self.watcher.close()
        await self.doors.close()

    def forget_endpoints(self) -> None:
        """Read the endpoint table again at the next request (a token was just rotated)."""
        self._loaded_at = -math.inf

    # ---- endpoints ----------------------------------------------------------------------------

    async def endpoints(self, not_before: float | None = None) -> dict[str, Endpoint]:
        """The endpoint table, re-read when older than the cache TTL or loaded before
        `not_before` (a monotonic time)."""
        now = time.monotonic()
        threshold = max(
            now - ENDPOINT_CACHE_TTL_S, not_before if not_before is not None else -math.inf
        )
        if self._loaded_at >= threshold:
            return self._table
        async with self._refresh_lock:
            if self._loaded_at >= threshold:  # another request refreshed it meanwhile
                return self._table
            started = time.monotonic()
            table, problems = endpoint_table(await self._read_deployments())
            for problem in problems:
                if problem not in self._reported:
                    self._reported.add(problem)
                    logger.warning(problem, extra={"action": "endpoint_not_served"})
            self._table, self._loaded_at = table, started
        return self._table

    async def _read_deployments(self) -> list[DeploymentResponse]:
        return await read_all_deployments(
            self.client, work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=self.pools))
        )

    async def endpoint(self, path: str, arrived: float) -> Endpoint:
        """The endpoint at `path`; a deployment created before the request arrived is seen."""
        endpoint = (await self.endpoints()).get(path)
        if endpoint is None:
            endpoint = (await self.endpoints(not_before=arrived)).get(path)
        if endpoint is None:
            raise GatewayError(404, f"no endpoint at {path!r}")
        return endpoint

    async def authenticate(self, endpoint: Endpoint, token: str | None, client: str) -> Endpoint:
        """The endpoint if `token` is its token (re-read on a mismatch: it may just have been
        rotated); 401 otherwise, and a wrong token counts against the client.

        A wrong token is counted as soon as it is seen, before the re-read: a client's
        concurrent wrong tokens meet its limit (429) as they arrive. The re-read is shared
        with the requests that asked for one before it began (`_reread`)."""
        if token is None:
            needs = (
                f"this endpoint needs its token; {TOKEN_HEADER_HELP}"
                if endpoint.spec.endpoint_token_hash
                else NO_TOKEN_YET  # e.g. made by `prefect deploy`
            )
            raise GatewayError(401, needs, headers={"WWW-Authenticate": "EndpointToken"})
        if token_matches(token, endpoint.spec.endpoint_token_hash):
            return endpoint
        self.refuse_blocked(client)  # its earlier wrong tokens, counted while this one came
        counted_at = time.monotonic()
        self.limiter.record(client, counted_at)
        fresh = await self._reread(endpoint)
        if fresh is not None and token_matches(token, fresh.spec.endpoint_token_hash):
            self.limiter.forget(client, counted_at)  # a token rotated in: not a wrong one
            return fresh
        logger.info(
            "Wrong token for endpoint %r from %s",
            endpoint.path,
            client,
            extra={"action": "bad_token"},
        )
        if fresh is not None and not fresh.spec.endpoint_token_hash:
            message = NO_TOKEN_YET
        else:
            message = (
                "the endpoint token is wrong; use the token shown when the deployment was "
                "created or last rotated (`pipedeploy endpoint token <deployment>` makes a new one)"
            )
        raise GatewayError(401, message, headers={"WWW-Authenticate": "EndpointToken"})

    async def _reread(self, endpoint: Endpoint) -> Endpoint | None:
        """The endpoint as its deployment is now (None once it is gone or serves no endpoint
        at this path), from a read begun after this request asked, shared by every request
        that asked before it began, creates included (`_deployments`, `reads.FreshReads`): a
        storm of wrong tokens costs one read at a time, not one each, and a token rotated
        before a request arrived is seen."""
        try:
            fresh = endpoint_of(await self._deployments.get(endpoint.deployment_id))
        except (ObjectNotFound, PipeDeployError):
            return None
        if fresh is not None and fresh.path == endpoint.path:
            self._table = {**self._table, fresh.path: fresh}
            return fresh
        return None

    def refuse_blocked(self, client: str) -> None:
        retry = self.limiter.retry_after(
            client, time.monotonic(), get_settings().gateway_bad_token_limit
        )
        if retry is not None:
            raise GatewayError(
                429,
                f"too many wrong endpoint tokens from this client; try again in {retry} s",
                headers={"Retry-After": str(retry)},
            )

    # ---- executions ---------------------------------------------------------------------------

    async def data_store(self) -> DataStore:
        try:
            return await aload_data_store(None, self.client)
        except DataStoreError as exc:
            logger.error("No usable data store: %s", exc, extra={"action": "no_data_store"})
            raise GatewayError(
                503,
                "the gateway cannot reach its data store, which keeps endpoint files; "
                "ask its operator to configure one",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
            ) from exc

    async def store_uploads(self, checked: CheckedInputs) -> list[str]:
        """Store the uploaded files and put their markers into the parameters; their keys."""
        if not checked.files:
            return []
        store = await self.data_store()
        keys: list[str] = []
        try:
            for pipeline_input, upload in checked.files.items():
                key = upload_key(safe_filename(upload.filename))
                await store.aupload(upload.stream(), key)
                keys.append(key)
                checked.parameters[pipeline_input] = file_input_marker(key)
        except DataStoreError as exc:
            logger.error("Could not store an upload: %s", exc, extra={"action": "upload_failed"})
            await self.delete_uploads(keys)
            raise GatewayError(
                503,
                "the data store did not take the uploaded file; try again later",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
            ) from exc
        return keys

    async def sweep_uploads(self, now: datetime | None = None) -> list[str]:
        """Remove the uploads past their retention that no execution may still read
        (`uploads.sweep_uploads`); their keys. Nothing when no data store is configured."""
        try:
            store = await aload_data_store(None, self.client)
        except DataStoreError:
            return []
        return await sweep_uploads(
            self.client,
            store,
            now or datetime.now(timezone.utc),
            get_settings().gateway_upload_retention_s,
        )

    async def keep_sweeping_uploads(self) -> None:
        """Sweep uploads now and then every `uploads.sweep_interval_s`, until cancelled."""
        while True:
            try:
                await self.sweep_uploads()
            except Exception as exc:  # the API or the store is away: next time
                logger.warning(
                    "Could not remove expired uploads: %s",
                    public_message(str(exc)),
                    extra={"action": "uploads_sweep_failed"},
                )
            await asyncio.sleep(sweep_interval_s(get_settings().gateway_upload_retention_s))

    async def delete_uploads(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with contextlib.suppress(Exception):
            store = await aload_data_store(None, self.client)
            for key in keys:
                await store.adelete_object(key, missing_ok=True)

    async def create_execution(
        self,
        endpoint: Endpoint,
        parameters: dict[str, Any],
        gone: Callable[[], Awaitable[bool]] = never_gone,
        idempotency_key: str | None = None,
    ) -> FlowRun:
        """Create the execution (`prefect_api.runs.create_execution`: secret inputs sealed,
        and discarded again if the create fails) when its turn comes in the gateway's queue;
        429 when the queue is full (`gateway_max_queued`) or too many of the deployment's
        executions wait already (`gateway_max_waiting`, counted by `reads.WaitingExecutions`).
        Nothing is created for a caller that has gone (`gone()` is checked while the call waits
        and right before the create).

        Up to `gateway_max_creating` creates go at a time, and a 503 from a busy SQLite
        server is retried within milliseconds instead of Prefect's seconds. The run is made
        from the deployment read after the call asked (one read shared by the calls that
        asked before it began, `reads.FreshReads`), through Prefect's plain create route where that
        makes the same run (`runs.create_deployment_run`): that route skips the server's check
        of the job variables, whose ~40 ms inside the create's transaction made most creates
        collide with other writes on a busy SQLite server (503, retried).
        """
        settings = get_settings()
        try:
            async with self.queue.turn(settings.gateway_max_queued, gone):
                return await self._create(
                    endpoint, parameters, settings.gateway_max_waiting, gone, idempotency_key
                )
        except QueueFull as full:
            if (refused := self.queue.refused.add(time.monotonic())) is not None:
                logger.warning(
                    "Endpoint %r: %d calls already wait to create an execution; %d call(s) "
                    "refused with 429 since the last such line (at most one every %g s)",
                    endpoint.path,
                    full.queued,
                    refused,
                    self.queue.refused.every_s,
                    extra={"action": "create_queue_full"},
                )
            raise GatewayError(
                429,
                f"the gateway is busy: {full.queued} calls wait to create an execution, its "
                f"limit ({env_name('gateway_max_queued')}); try again in {full.retry_after_s} s",
                headers={"Retry-After": str(full.retry_after_s)},
            ) from None
        except CallerGone:
            logger.info(
                "Endpoint %r: the caller went away before its execution was created; none was",
                endpoint.path,
                extra={"action": "caller_gone"},
            )
            raise GatewayError(
                499, "the caller went away before its execution was created; none was created"
            ) from None

    async def _count_waiting(self, deployment_id: UUID) -> int:
        """Prefect's count of the deployment's executions that wait (Scheduled, Pending)."""
        return await self.client.count_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                )
            ),
        )

    async def _create(
        self,
        endpoint: Endpoint,
        parameters: dict[str, Any],
        limit: int,
        gone: Callable[[], Awaitable[bool]],
        idempotency_key: str | None = None,
    ) -> FlowRun:
        try:  # both reads at once, shared with the calls that asked with this one (`reads`);
            # the deployment as it is now (read after this call asked) makes the run (below)
            counted, deployment = await asyncio.gather(
                self._waiting.read(endpoint.deployment_id),
                self._deployments.get(endpoint.deployment_id),
            )
        except ObjectNotFound:
            raise self._endpoint_gone(endpoint) from None
        waiting = self._waiting.waiting(endpoint.deployment_id, counted)
        if waiting >= limit:
            raise GatewayError(
                429,
                f"this endpoint has {waiting} executions waiting, its limit "
                f"({env_name('gateway_max_waiting')}); try again later",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
            )
        try:
            with self._waiting.creating(endpoint.deployment_id):  # counted before any await
                if await gone():  # right before the create: a caller that left gets none
                    raise CallerGone()
                return await create_execution(
                    self.client,
                    endpoint.deployment_id,
                    endpoint.spec,
                    parameters,
                    RUN_TAGS,
                    idempotency_key=idempotency_key,
                    deployment=deployment,
                )
        except ObjectNotFound:
            raise self._endpoint_gone(endpoint) from None
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code in (409, 422):
                detail = public_message(_detail_of(exc.response))
                if "must be less than" in detail and "bytes" in detail:  # max_parameter_size
                    raise GatewayError(
                        413,
                        f"the Prefect server refused the inputs as too large: {detail}; send "
                        "large data as a file input (multipart/form-data) or through the "
                        "data store",
                    ) from None
                raise GatewayError(
                    400,
                    "the Prefect server refused the inputs: "
                    f"{detail or 'it gave no reason'}; check them against the endpoint's "
                    "inputs (GET /openapi.json)",
                ) from None
            raise

    def _endpoint_gone(self, endpoint: Endpoint) -> GatewayError:
        """Its deployment was deleted since the table was read: the table is read again at the
        next request, and this call gets 404."""
        self._loaded_at = -math.inf
        return GatewayError(404, f"no endpoint at {endpoint.path!r}")

    # ---- the two calls ------------------------------------------------------------------------

    async def authorized_endpoint(
        self, request: Request, path: str, arrived: float, allow_query: bool
    ) -> tuple[Any, str | None, bool]:
        """The endpoint at `path` if the caller's token opens it (else 401/404/429)."""
        client = _client_address(request)
        self.refuse_blocked(client)
        endpoint = await self.endpoint(path, arrived)
        token, in_query = _token_of(request, allow_query=allow_query)
        return await self.authenticate(endpoint, token, client), token, in_query

    async def call(self, request: Request, path: str, wait_for_completion: bool) -> Response:
        """POST /endpoints/{path}: check, create the execution, answer (at once, without
        waiting, to the reference platform's client: it waits on `/endpoints/v1/...`)."""
        if from_platform_client(request):
            wait_for_completion = False
        arrived = time.monotonic()
        endpoint, _, _ = await self.authorized_endpoint(request, path, arrived, allow_query=False)
        if endpoint.paused:
            raise GatewayError(
                409,
                f"endpoint {path!r} is disabled; its owner enables it with "
                "update_deployment(..., disabled=False)",
            )
        items, form = await read_body(request)
        if form and from_platform_client(request):
            items = json_string_fields(items)
        try:  # uploaded files live in temporary files until they are stored
            checked = check_inputs(endpoint, items, form=form)
            if checked.errors:
                raise GatewayError(
                    400,
                    invalid_inputs_message(checked.errors),
                    errors=[asdict(error) for error in checked.errors],
                )
            limit = get_current_settings().server.api.max_parameter_size
            if (too_large := oversized_message(endpoint, checked, limit)) is not None:
                raise GatewayError(413, too_large)
            keys = await self.store_uploads(checked)
        finally:
            close_files(items)
        try:
            # one key for both paths: a pod whose answer was lost made the run the worker's
            # path would make, and the create gives that run back (no second execution)
            idempotency_key = f"pipedeploy-call-{uuid4()}"
            direct = await self.offer_to_pod(request, endpoint, checked.parameters, idempotency_key)
            if direct is None:
                run = await self.create_execution(
                    endpoint, checked.parameters, request.is_disconnected, idempotency_key
                )
                run_id = run.id
            else:
                accepted = await direct.accepted
                assert accepted is not None  # `offer_to_pod` returns accepted calls only
                run_id = accepted
        except BaseException:
            await self.delete_uploads(keys)
            raise
        emit_endpoint_called(
            endpoint.path, endpoint.deployment_id, endpoint.deployment_name, run_id, checked.public
        )
        logger.info(
            "Endpoint %r: execution %s created for %s%s",
            path,
            run_id,
            _client_address(request),
            " (by its pod)" if direct is not None else "",
            extra={"action": "endpoint_called"},
        )
        location = execution_location(request, path, run_id, None)
        if not wait_for_completion:
            return JSONResponse(
                {"execution_id": str(run_id)},
                status_code=202,
                headers={"Location": location, "X-Execution-Id": str(run_id)},
            )
        wait_s = get_settings().gateway_wait_s
        if direct is not None:
            return await self.answers.direct_answer(
                request, endpoint, run_id, direct, wait_s, location
            )
        return await self.answers.answer(request, endpoint, run, wait_s, location)

    async def offer_to_pod(
        self,
        request: Request,
        endpoint: Endpoint,
        parameters: dict[str, Any],
        idempotency_key: str,
    ) -> DirectCall | None:
        """The call, taken by its low-latency pod (`direct`); None: it takes the worker's path
        (direct dispatch off, an elastic deployment, no pod free).

        An offer takes its turn in the gateway's create queue like a create (the pod's create
        is one write on the same server): a burst meets the same limit and the same 429, and
        a caller gone before its turn meets the create's 499 (both raised by `create_execution`,
        which a full queue or a gone caller falls through to)."""
        settings = get_settings()
        if not settings.gateway_direct_dispatch or endpoint.spec.mode != Mode.low_latency.value:
            return None
        try:
            async with self.queue.turn(settings.gateway_max_queued, request.is_disconnected):
                return await self.doors.offer(
                    endpoint.deployment_id,
                    endpoint.spec.parallelism,
                    parameters,
                    RUN_TAGS,
                    idempotency_key,
                    endpoint.updated,
                )
        except (QueueFull, CallerGone):
            return None

    async def results(self, request: Request, path: str, execution_id: str) -> Response:
        """GET /endpoints/{path}/executions/{id}: long-poll an execution's result."""
        endpoint, token, in_query = await self.authorized_endpoint(
            request, path, time.monotonic(), allow_query=True
        )
        run = await self.answers.read_run(endpoint, execution_id)
        location = execution_location(request, path, run.id, token if in_query else None)
        return await self.answers.answer(
            request, endpoint, run, get_settings().gateway_wait_s, location
        )
