"""The SDK's execution verbs: run a deployment, list, read, wait for and cancel executions, read
their logs.

For: `ExecutionVerbs`, mixed into `PipeDeploy`; each verb has an async core and a sync twin.
Not for: endpoint calls through the gateway (`endpoints`), recorded inputs and outputs
(`datastore`).
"""

from __future__ import annotations

import contextlib
import math
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTimestamp,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import Abort, ObjectNotFound
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy.exceptions import (
    DeploymentNotFound,
    ExecutionAlreadyFinal,
    ExecutionStillRunning,
    SpecError,
)
from prefect_pipedeploy.prefect_api.busy import retry_busy
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.prefect_api.records import read_inputs, read_outputs
from prefect_pipedeploy.prefect_api.runs import create_execution, request_cancel
from prefect_pipedeploy.sdk.base import TAG, Verbs, pipedeploy_pools
from prefect_pipedeploy.sdk.compat import input_records
from prefect_pipedeploy.sdk.views import _iso, _level_name, execution_view, pipeline_name_of
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import (
    spec_from_job_variables,
)
from prefect_pipedeploy.status import settled


class ExecutionVerbs(Verbs):
    """Execution verbs; mixed into `PipeDeploy`."""

    async def alist_pipeline_executions(
        self,
        deployment_name: str | None = None,
        limit: int = 100,
        include_scheduled: bool = False,
        *,
        pipeline_name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Executions, of one deployment when `deployment_name` is given: those that started,
        the most recent start first, then those due that have not started (waiting), the most
        recently due first; with `include_scheduled`, then the runs a schedule has made ahead
        of time, the soonest first (before, those came first: a 1-minute schedule's listing
        was 50 future runs and none that ran). Any `limit` works: the server gives at most
        200 runs per read, so the listing reads page after page. `pipeline_name` (the
        platform's way): the executions of every deployment of that pipeline (the entrypoint's
        function, as `get_deployment` shows it in `pipeline_name`)."""
        if limit < 1:
            raise SpecError(f"limit must be 1 or more, got {limit}")
        if deployment_name is not None and pipeline_name is not None:
            raise SpecError(
                "give deployment_name or pipeline_name, not both: a deployment runs one pipeline"
            )
        now = datetime.now(timezone.utc)
        async with self._client() as client:
            # deployment id -> (deployment name, pipeline name)
            names: dict[UUID, tuple[str | None, str | None]] = {}
            deployment_filter = None
            if deployment_name is not None:
                deployment = await self._deployment(client, deployment_name)
                names[deployment.id] = _names_of(deployment)
                deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            elif pipeline_name is not None:
                for deployment in await read_all_deployments(
                    client, work_pool_filter=pipedeploy_pools()
                ):
                    if pipeline_name_of(deployment.entrypoint) == pipeline_name:
                        names[deployment.id] = _names_of(deployment)
                if not names:
                    return []
                deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=list(names)))
            parts = [
                (FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)), START_DESC),
                (_not_started(expected_before=now), FlowRunSort.EXPECTED_START_TIME_DESC),
            ]
            if include_scheduled:
                parts.append(
                    (_not_started(expected_after=now), FlowRunSort.EXPECTED_START_TIME_ASC)
                )
            flow_runs: list[FlowRun] = []
            for flow_run_filter, sort in parts:
                flow_runs += await _read_pages(
                    client, deployment_filter, flow_run_filter, sort, limit - len(flow_runs)
                )
            # a run that started between two reads (or a page that moved) is listed once
            flow_runs = list({run.id: run for run in flow_runs}.values())
            for run in flow_runs:
                if run.deployment_id and run.deployment_id not in names:
                    try:
                        names[run.deployment_id] = _names_of(
                            await client.read_deployment(run.deployment_id)
                        )
                    except ObjectNotFound:
                        names[run.deployment_id] = (None, None)
        return [
            execution_view(run, *names.get(run.deployment_id or _NO_ID, (None, None)))
            for run in flow_runs
        ]

    async def arun_deployment(
        self,
        deployment_name: str,
        inputs: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        """Start an execution of a deployment now (through Prefect, not the HTTP gateway).

        Waits for its final state unless `wait_for_completion` is False; returns what
        get_pipeline_execution returns.
        """
        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            spec = spec_from_job_variables(deployment.job_variables)
            try:
                flow_run = await create_execution(client, deployment.id, spec, inputs or {}, [TAG])
            except ObjectNotFound:
                raise DeploymentNotFound(
                    f"deployment {deployment_name!r} was deleted before its execution could be "
                    "created; list the deployments with `pipedeploy deployment ls`"
                ) from None
        if wait_for_completion:
            await self.await_execution(flow_run.id, timeout_s)
        return await self.aget_pipeline_execution(flow_run.id)

    async def await_execution(self, execution_id: str | UUID, timeout_s: float = 300.0) -> None:
        """Wait until an execution is settled (`status.settled`, the gateway's rule too): final,
        and not about to be retried by its worker."""
        import anyio

        grace_s = get_settings().retry_grace_s
        max_retries: int | None = None
        with anyio.fail_after(timeout_s):
            async with self._client() as client:
                while True:
                    flow_run = await self._flow_run(client, execution_id)
                    state = flow_run.state
                    if max_retries is None and state is not None and state.is_final():
                        max_retries = await _max_retries(client, flow_run)
                    if settled(flow_run, max_retries or 0, datetime.now(timezone.utc), grace_s):
                        return
                    await anyio.sleep(0.1)

    async def aget_pipeline_execution(self, execution_id: str | UUID) -> dict[str, Any]:
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            names: tuple[str | None, str | None] = (None, None)
            spec = None
            if flow_run.deployment_id:
                with contextlib.suppress(ObjectNotFound):
                    deployment = await client.read_deployment(flow_run.deployment_id)
                    names = _names_of(deployment)
                    spec = spec_from_job_variables(deployment.job_variables)
            view = execution_view(flow_run, *names)
            view["outputs"] = await read_outputs(client, flow_run.id)
            inputs = await read_inputs(client, flow_run.id) or {}
        # the platform's lists: every input with where it came from, and its one step (a
        # deployment here runs one pipeline, a flow, not a chain of steps)
        view["inputs"] = input_records(inputs, spec)
        view["steps"] = [
            {
                "name": view.get("pipeline_name"),
                "status": view["status"],
                "start_date": _iso(flow_run.start_time),
                "end_date": view.get("end_date"),
            }
        ]
        return view

    async def acancel_pipeline_execution(
        self, execution_id: str | UUID, wait: bool = True, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Cancel an execution, as the Prefect UI's Cancel does: one that has not started never
        runs (Cancelled at once); a running one is stopped by its worker (its process killed,
        its task cancelled, or, for a `def` pipeline in a pod's thread, its result discarded:
        README, "Cancel an execution") and ends Cancelled. With `wait`, returns once it is final
        (at most `timeout_s`); the execution as it is then. Raises ExecutionAlreadyFinal when it
        had ended already."""
        import anyio

        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            try:
                await request_cancel(client, flow_run.id)
            except Abort:
                ended = await client.read_flow_run(flow_run.id)
                raise ExecutionAlreadyFinal(
                    f"execution {flow_run.id} has already ended "
                    f"({execution_view(ended)['status']}, {ended.state_name}): there is "
                    "nothing to cancel"
                ) from None
            with anyio.move_on_after(timeout_s if wait else 0):
                while wait:
                    state = (await client.read_flow_run(flow_run.id)).state
                    if state is None or state.is_final():
                        break
                    await anyio.sleep(0.2)
        return await self.aget_pipeline_execution(flow_run.id)

    async def aget_pipeline_execution_logs(
        self,
        execution_id: str | UUID,
        from_datetime: datetime | None = None,
        to_datetime: datetime | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The log lines of one execution, oldest first: those stamped in [`from_datetime`,
        `to_datetime`] (naive times are UTC), the first `limit` of them."""
        if limit is not None and limit < 0:
            raise SpecError(f"limit must be 0 or more, got {limit}")
        window: dict[str, Any] = {"after_": _utc(from_datetime), "before_": _utc(to_datetime)}
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            log_filter = LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]),
                timestamp=LogFilterTimestamp(**window),
            )
            logs: list[Any] = []
            wanted = limit if limit is not None else float("inf")
            while len(logs) < wanted:
                asked = int(min(200, wanted - len(logs)))
                page = await client.read_logs(
                    log_filter=log_filter, sort=LogSort.TIMESTAMP_ASC, limit=asked, offset=len(logs)
                )
                logs.extend(page)
                if len(page) < asked:
                    break
        return [
            {
                "timestamp": _iso(log.timestamp),
                "level": _level_name(log.level),
                "message": log.message,
            }
            for log in logs
        ]

    async def adelete_pipeline_execution(self, execution_id: str | UUID) -> dict[str, Any]:
        """Delete an execution: its flow run and what it recorded (its inputs and outputs
        artifacts); returns what was deleted, as the platform does: {"execution_id"}. One
        that a worker may be running is refused: cancel it first. Its log lines stay in
        Prefect (its API deletes none); data-store objects it wrote stay too."""
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            state = flow_run.state
            if state is not None and state.type in _BUSY:
                raise ExecutionStillRunning(
                    f"execution {flow_run.id} is {execution_view(flow_run)['status']} "
                    f"({state.name}): cancel it with cancel_pipeline_execution, then delete it"
                )
            artifacts = await client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
            )
            for artifact in artifacts:
                with contextlib.suppress(ObjectNotFound):
                    await client.delete_artifact(artifact.id)
            try:
                await retry_busy(client, lambda: client.delete_flow_run(flow_run.id))
            except ObjectNotFound:
                pass  # deleted meanwhile: the outcome asked for
        return {"execution_id": str(flow_run.id)}

    async def aretrieve_pipeline_execution_outputs(
        self, execution_id: str | UUID, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Wait until an execution is settled (at most `timeout_s`; None: as long as it
        takes) and return the platform's {"execution_id", "outputs"}."""
        await self.await_execution(execution_id, timeout_s if timeout_s is not None else math.inf)
        execution = await self.aget_pipeline_execution(execution_id)
        return {"execution_id": execution["execution_id"], "outputs": execution["outputs"]}

    def list_pipeline_executions(
        self,
        deployment_name: str | None = None,
        limit: int = 100,
        include_scheduled: bool = False,
        *,
        pipeline_name: str | None = None,
    ) -> list[dict[str, Any]]:
        return run_coro_as_sync(
            self.alist_pipeline_executions(
                deployment_name, limit, include_scheduled, pipeline_name=pipeline_name
            )
        )

    def run_deployment(
        self,
        deployment_name: str,
        inputs: dict[str, Any] | None = None,
        wait_for_completion: bool = True,
        timeout_s: float = 300.0,
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.arun_deployment(deployment_name, inputs, wait_for_completion, timeout_s)
        )

    def get_pipeline_execution(self, execution_id: str | UUID) -> dict[str, Any]:
        return run_coro_as_sync(self.aget_pipeline_execution(execution_id))

    def get_pipeline_execution_logs(
        self,
        execution_id: str | UUID,
        from_datetime: datetime | None = None,
        to_datetime: datetime | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        return run_coro_as_sync(
            self.aget_pipeline_execution_logs(execution_id, from_datetime, to_datetime, limit)
        )

    def delete_pipeline_execution(self, execution_id: str | UUID) -> dict[str, Any]:
        return run_coro_as_sync(self.adelete_pipeline_execution(execution_id))

    def retrieve_pipeline_execution_outputs(
        self, execution_id: str | UUID, timeout_s: float | None = None
    ) -> dict[str, Any]:
        return run_coro_as_sync(self.aretrieve_pipeline_execution_outputs(execution_id, timeout_s))

    def cancel_pipeline_execution(
        self, execution_id: str | UUID, wait: bool = True, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        return run_coro_as_sync(self.acancel_pipeline_execution(execution_id, wait, timeout_s))


#: States in which a worker may be running the execution: it cannot be deleted then.
_BUSY = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.PAUSED)

#: The key of runs without a deployment, in the listing's names.
_NO_ID = UUID(int=0)


def _names_of(deployment: DeploymentResponse) -> tuple[str | None, str | None]:
    return deployment.name, pipeline_name_of(deployment.entrypoint)


def _utc(value: datetime | None) -> datetime | None:
    """A time for a log filter; the platform's client reads naive times as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


#: Prefect's most flow runs per read (`limit` above it is a 422).
SERVER_PAGE = 200
START_DESC = FlowRunSort.START_TIME_DESC


def _not_started(
    expected_before: datetime | None = None, expected_after: datetime | None = None
) -> FlowRunFilter:
    expected: dict[str, Any] = {"before_": expected_before, "after_": expected_after}
    return FlowRunFilter(
        start_time=FlowRunFilterStartTime(is_null_=True),
        expected_start_time=FlowRunFilterExpectedStartTime(**expected),
    )


async def _read_pages(
    client: PrefectClient,
    deployment_filter: DeploymentFilter | None,
    flow_run_filter: FlowRunFilter,
    sort: FlowRunSort,
    wanted: int,
) -> list[FlowRun]:
    """Up to `wanted` runs of the pipedeploy pools, read SERVER_PAGE at a time."""
    found: list[FlowRun] = []
    while len(found) < wanted:
        asked = min(SERVER_PAGE, wanted - len(found))
        page = await client.read_flow_runs(
            deployment_filter=deployment_filter,
            flow_run_filter=flow_run_filter,
            work_pool_filter=pipedeploy_pools(),
            sort=sort,
            limit=asked,
            offset=len(found),
        )
        found += page
        if len(page) < asked:
            break
    return found


async def _max_retries(client: PrefectClient, flow_run: FlowRun) -> int:
    """How often the run's deployment retries a failed execution (0 without a deployment)."""
    if flow_run.deployment_id is None:
        return 0
    try:
        deployment = await client.read_deployment(flow_run.deployment_id)
    except ObjectNotFound:
        return 0
    return spec_from_job_variables(deployment.job_variables).max_retries
