"""The gateway's answers that carry an execution's result.

For: `ResultAnswers`: reading an endpoint's execution (404 when it is another endpoint's), waiting
for it to settle (the gateway's run watcher, or its pod's report for a call the pod took), and
answering with its outputs, the bytes of its one file output, its failure (500 with the reason),
or a 303 to follow when it has not settled within the wait. Not for: creating executions or
checking tokens (`service`), errors and messages fit for a caller (`answers`).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger
from starlette.background import BackgroundTask

from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.exceptions import DataStoreError, DataStoreObjectNotFound
from prefect_pipedeploy.gateway.answers import (
    WAITING_RETRY_AFTER_S,
    GatewayError,
    _unlink,
    public_message,
    wants_json_only,
)
from prefect_pipedeploy.gateway.direct import DirectCall, PodLost
from prefect_pipedeploy.gateway.endpoints import Endpoint
from prefect_pipedeploy.gateway.waiting import RunWatcher
from prefect_pipedeploy.prefect_api.records import read_outputs, read_stored_outputs
from prefect_pipedeploy.status import EXECUTION_STATUS, execution_status, settled

logger = get_logger("prefect_pipedeploy.gateway.results")


def still_running(run_id: UUID, status: str, location: str) -> Response:
    """The 303 of a call whose execution has not ended within the gateway's wait."""
    return JSONResponse(
        {
            "message": "the execution is still running; follow Location (GET, same token) to "
            "wait for its result",
            "execution_id": str(run_id),
            "status": status,
        },
        status_code=303,
        headers={"Location": location, "X-Execution-Id": str(run_id)},
    )


class ResultAnswers:
    """The result answers of one gateway: its client, run watcher and data store."""

    def __init__(
        self,
        client: PrefectClient,
        watcher: RunWatcher,
        data_store: Callable[[], Awaitable[DataStore]],
    ) -> None:
        self.client = client
        self.watcher = watcher
        self.data_store = data_store

    async def read_run(self, endpoint: Endpoint, execution_id: str) -> FlowRun:
        """The endpoint's execution `execution_id`; 404 when there is none (or it is another
        endpoint's)."""
        try:
            run = await self.client.read_flow_run(UUID(execution_id))
        except (ValueError, ObjectNotFound):
            run = None
        if run is None or run.deployment_id != endpoint.deployment_id:
            raise GatewayError(404, f"endpoint {endpoint.path!r} has no execution {execution_id!r}")
        return run

    async def answer(
        self, request: Request, endpoint: Endpoint, run: FlowRun, wait_s: float, location: str
    ) -> Response:
        """The result if the execution settles within `wait_s`, else a 303 to `location`."""
        max_retries = endpoint.spec.max_retries
        if not settled(run, max_retries, datetime.now(timezone.utc)):
            latest, done = await self.watcher.wait(run.id, max_retries, wait_s)
            if not done:
                return still_running(run.id, execution_status(latest or run), location)
            assert latest is not None
            run = latest
        return await self.final_answer(request, run)

    async def direct_answer(
        self,
        request: Request,
        endpoint: Endpoint,
        run_id: UUID,
        call: DirectCall,
        wait_s: float,
        location: str,
    ) -> Response:
        """`answer` for a call its pod took (`direct`): the pod's report once the run is final
        (its outputs with it, no read), or a 303 past `wait_s`. A run that did not succeed, or
        whose pod was lost on the way, is answered from Prefect as any other (retries, Crashed)."""
        deadline = time.monotonic() + wait_s
        try:
            report = await asyncio.wait_for(asyncio.shield(call.finished), wait_s)
        except asyncio.TimeoutError:
            return still_running(run_id, EXECUTION_STATUS[StateType.RUNNING], location)
        except PodLost as lost:
            logger.info(
                "Endpoint %r: %s before execution %s ended; waiting for it through Prefect",
                endpoint.path,
                lost,
                run_id,
                extra={"action": "direct_pod_lost"},
            )
            report = None
        if report is not None and report.get("state") == StateType.COMPLETED.value:
            outputs, stored = report.get("outputs") or {}, report.get("stored") or {}
            return await self.outputs_answer(request, run_id, outputs, stored)
        run = await self.read_run(endpoint, str(run_id))
        remaining_s = max(0.0, deadline - time.monotonic())
        return await self.answer(request, endpoint, run, remaining_s, location)

    async def final_answer(self, request: Request, run: FlowRun) -> Response:
        state = run.state
        assert state is not None
        headers = {"X-Execution-Id": str(run.id)}
        if state.type != StateType.COMPLETED:
            message = public_message(state.message) or f"the execution ended {state.name}"
            return JSONResponse(
                {"message": message, "execution_id": str(run.id), "status": execution_status(run)},
                status_code=500,
                headers=headers,
            )
        outputs = await read_outputs(self.client, run.id) or {}
        return await self.outputs_answer(request, run.id, outputs)

    async def outputs_answer(
        self,
        request: Request,
        run_id: UUID,
        outputs: dict[str, Any],
        stored: dict[str, str] | None = None,
    ) -> Response:
        """A succeeded execution's answer: its outputs, or the bytes of its one file output when
        it returned nothing else and the caller takes more than JSON (`stored`: the data-store
        keys of its stored outputs, read from its record when not given)."""
        if not outputs and not wants_json_only(request.headers.get("accept")):
            if stored is None:
                stored = await read_stored_outputs(self.client, run_id) or {}
            if len(stored) == 1:
                name, key = next(iter(stored.items()))
                return await self.file_answer(run_id, name, key)
        return JSONResponse(
            {"execution_id": str(run_id), "outputs": outputs},
            headers={"X-Execution-Id": str(run_id)},
        )

    async def file_answer(self, run_id: UUID, output_name: str, key: str) -> Response:
        """The bytes of the execution's single file output, streamed from a temporary copy."""
        store = await self.data_store()
        handle, local = tempfile.mkstemp(prefix="pipedeploy-gateway-")
        os.close(handle)
        try:
            await store.adownload(key, local)
        except DataStoreObjectNotFound:
            _unlink(local)
            raise GatewayError(
                500,
                f"output {output_name!r} was stored at {key!r} but is no longer in the data store",
                execution_id=str(run_id),
                status="Succeeded",
            ) from None
        except DataStoreError as exc:
            _unlink(local)
            logger.error(
                "Could not fetch output %r: %s", key, exc, extra={"action": "output_failed"}
            )
            raise GatewayError(
                503,
                f"the data store did not return output {output_name!r}; try again",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
                execution_id=str(run_id),
            ) from exc
        return FileResponse(
            local,
            media_type="application/octet-stream",
            filename=key.rsplit("/", 1)[-1],
            headers={"X-Execution-Id": str(run_id), "X-Output-Name": output_name},
            background=BackgroundTask(_unlink, local),
        )
