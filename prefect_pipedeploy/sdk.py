"""The Python SDK: `PipeDeploy`, with the platform's verbs, on top of the Prefect API.

For: creating, reading, updating and deleting pipeline deployments, and reading their executions
and logs, as plain dicts and lists. Every verb has an async core (`acreate_deployment`) and a
thin sync twin (`create_deployment`). Not for: running pipelines (the worker and pods do), or
HTTP triggering (the gateway; its SDK verbs arrive with it).

    from prefect_pipedeploy import PipeDeploy
    pd = PipeDeploy()                       # PREFECT_API_URL, or PipeDeploy(api_url=...)
    pd.create_deployment("flows/demo.py:score", "score", execution_rule="endpoint")
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    WorkPoolFilter,
    WorkPoolFilterType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_function_and_convert_to_flow
from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import parameter_schema

from prefect_pipedeploy.exceptions import (
    DeploymentExists,
    DeploymentNotFound,
    ExecutionNotFound,
    PipelineLoadError,
    SpecError,
)
from prefect_pipedeploy.fastcreate import create_run
from prefect_pipedeploy.listing import read_all_deployments
from prefect_pipedeploy.pods import delete_pod_statuses, read_pod_status
from prefect_pipedeploy.poolcap import check_fits_cap, read_pool_ram_cap
from prefect_pipedeploy.records import read_outputs
from prefect_pipedeploy.sdk_datastore import DataStoreVerbs
from prefect_pipedeploy.sdk_gateway import GatewayVerbs
from prefect_pipedeploy.sdk_pool import PoolVerbs
from prefect_pipedeploy.sealed import discard, seal_inputs, sealed_keys
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import (
    DeploymentSpec,
    ExecutionRule,
    InputSource,
    Mode,
    OutputDestination,
    build_spec,
    format_mib,
    spec_from_job_variables,
)
from prefect_pipedeploy.tokens import hash_token, new_token
from prefect_pipedeploy.triggers import delete_endpoint_trigger, ensure_endpoint_trigger

WORKER_TYPE = "pipedeploy"
TAG = "pipedeploy"

# Prefect state type -> the platform's execution status
EXECUTION_STATUS = {
    StateType.SCHEDULED: "Pending",
    StateType.PENDING: "Pending",
    StateType.RUNNING: "Running",
    StateType.PAUSED: "Running",
    StateType.CANCELLING: "Running",
    StateType.COMPLETED: "Succeeded",
    StateType.FAILED: "Failed",
    StateType.CANCELLED: "Failed",
    StateType.CRASHED: "Error",
}

# How long a Failed execution with retries left may stay Failed before it counts as final.
RETRY_GRACE_S = 5.0

_SETTINGS_FIELDS = (
    "enable_parallel_executions",
    "max_parallel_executions_per_pod",
    "max_retries",
    "ram_request",
    "execution_timeout_s",
)


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


def load_pipeline(pipeline: Any) -> tuple[Flow[..., Any], Path, str]:
    """A pipeline as (flow, directory of its file, entrypoint relative to that directory).

    `pipeline` is a flow, a plain function (wrapped into a flow whose returned dict is the
    outputs), or an entrypoint "path/to/file.py:function".
    """
    if isinstance(pipeline, str):
        if ":" not in pipeline:
            raise PipelineLoadError(
                f"pipeline {pipeline!r} is not an entrypoint; write it as 'path/to/file.py:function'"
            )
        file_part, func_name = pipeline.rsplit(":", 1)
        path = Path(file_part).expanduser().resolve()
        if not path.is_file():
            raise PipelineLoadError(f"pipeline {pipeline!r}: no file at {path}")
        try:
            flow: Flow[..., Any] = load_function_and_convert_to_flow(f"{path}:{func_name}")
        except Exception as exc:
            raise PipelineLoadError(
                f"pipeline {pipeline!r} could not be imported: {type(exc).__name__}: {exc}"
            ) from exc
        return flow, path.parent, f"{path.name}:{func_name}"
    if isinstance(pipeline, Flow):
        flow, fn = pipeline, pipeline.fn
    elif callable(pipeline):
        fn = pipeline
        flow = Flow(pipeline, log_prints=True)
    else:
        raise PipelineLoadError(
            f"pipeline must be a flow, a function or 'file.py:function', not {type(pipeline).__name__}"
        )
    source = inspect.getsourcefile(fn)
    qualname = getattr(fn, "__qualname__", "")
    if source is None or "<" in qualname:
        raise PipelineLoadError(
            f"pipeline {getattr(fn, '__name__', fn)!r} must be defined at the top level of a "
            "Python file so that workers can import it"
        )
    path = Path(source).resolve()
    return flow, path.parent, f"{path.name}:{fn.__name__}"


def _pipeline_parameters(flow: Flow[..., Any]) -> tuple[list[str], list[str]]:
    signature = inspect.signature(flow.fn)
    names = [name for name in signature.parameters if name not in ("self", "cls")]
    required = [
        name
        for name, parameter in signature.parameters.items()
        if name in names
        and parameter.default is inspect.Parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    return names, required


# ---------------------------------------------------------------------------------------------
# Dict views
# ---------------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def deployment_status(
    deployment: DeploymentResponse, spec: DeploymentSpec, pod: dict[str, Any] | None
) -> str:
    """creation_pending | up | standby | creation_failed | down_retrying | disabled.

    A low-latency deployment's status is what its worker last published for its pod.
    """
    if deployment.paused:
        return "disabled"
    if spec.mode == Mode.elastic.value:
        return "standby"
    status = (pod or {}).get("status")
    return status if status in POD_STATUSES else "creation_pending"


POD_STATUSES = ("creation_pending", "up", "creation_failed", "down_retrying")


def deployment_view(
    deployment: DeploymentResponse, pod: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec = spec_from_job_variables(deployment.job_variables)
    endpoint = spec.execution_rule == ExecutionRule.endpoint.value
    return {
        "id": str(deployment.id),
        "name": deployment.name,
        "pipeline": deployment.entrypoint,
        "pipeline_path": deployment.path,
        "work_pool_name": deployment.work_pool_name,
        "execution_rule": spec.execution_rule,
        "mode": spec.mode,
        "status": deployment_status(deployment, spec, pod),
        "status_message": (pod or {}).get("message") if spec.mode != Mode.elastic.value else None,
        # a low-latency deployment has a pod on each worker of its pool: each one's status
        "pods": (pod or {}).get("pods", []) if spec.mode != Mode.elastic.value else [],
        "description": deployment.description,
        "schedule": spec.schedule.model_dump() if spec.schedule else None,
        "endpoint_url_path": (spec.endpoint_url_path or deployment.name) if endpoint else None,
        "inputs_mapping": [m.model_dump(exclude_defaults=True) for m in spec.inputs_mapping],
        "outputs_mapping": [m.model_dump(exclude_defaults=True) for m in spec.outputs_mapping],
        "settings": {name: getattr(spec, name) for name in _SETTINGS_FIELDS},
        "created": _iso(deployment.created),
        "updated": _iso(deployment.updated),
    }


def execution_view(flow_run: FlowRun, deployment_name: str | None = None) -> dict[str, Any]:
    state = flow_run.state
    return {
        "execution_id": str(flow_run.id),
        "deployment_name": deployment_name,
        "status": EXECUTION_STATUS.get(state.type, "Pending") if state else "Pending",
        "state_name": state.name if state else None,
        "message": state.message if state else None,
        "attempts": flow_run.run_count,
        "created": _iso(flow_run.created),
        "expected_start_time": _iso(flow_run.expected_start_time),
        "start_time": _iso(flow_run.start_time),
        "end_time": _iso(flow_run.end_time),
        "duration_s": flow_run.total_run_time.total_seconds(),
        "parameters": flow_run.parameters,
    }


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


class PipeDeploy(DataStoreVerbs, GatewayVerbs, PoolVerbs):
    """The platform's verbs on a Prefect server (PREFECT_API_URL, or `api_url`).

    `data_store` names the data store block for the data-store verbs ("<type-slug>/<name>");
    default: PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE. `gateway_url` is the endpoint
    gateway for the trigger verbs; default: PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL.
    """

    def __init__(
        self,
        api_url: str | None = None,
        work_pool_name: str | None = None,
        data_store: str | None = None,
        gateway_url: str | None = None,
    ) -> None:
        self.data_store = data_store
        self.gateway_url = gateway_url
        # The API is fixed when the client is made, so every thread that uses it talks to the
        # same server (Prefect's settings context does not follow a call into a new thread).
        self.api_url = api_url or PREFECT_API_URL.value()
        self._api_key = PREFECT_API_KEY.value()
        self.work_pool_name = work_pool_name or get_settings().default_pool

    def _client(self) -> PrefectClient:
        if self.api_url:
            return PrefectClient(self.api_url, api_key=self._api_key)
        return get_client()  # Prefect's ephemeral mode, when no API is configured

    # ---- deployments --------------------------------------------------------------------------

    async def acreate_deployment(
        self,
        pipeline: Any,
        deployment_name: str,
        execution_rule: str = "endpoint",
        mode: str = "elastic",
        schedule: Any = None,
        endpoint_url_path: str | None = None,
        inputs_mapping: list[InputSource | dict[str, Any]] | None = None,
        outputs_mapping: list[OutputDestination | dict[str, Any]] | None = None,
        description: str | None = None,
        enable_parallel_executions: bool = False,
        max_parallel_executions_per_pod: int = 6,
        ram_request: str = "512MiB",
        execution_timeout_s: float | None = None,
        endpoint_token: str | None = None,
        max_retries: int = 1,
        work_pool_name: str | None = None,
    ) -> dict[str, Any]:
        """Create a deployment of `pipeline`; returns what get_deployment returns, plus the
        endpoint token of an endpoint deployment (shown here and nowhere else)."""
        _check_name(deployment_name)
        values: dict[str, Any] = {
            "execution_rule": execution_rule,
            "mode": mode,
            "enable_parallel_executions": enable_parallel_executions,
            "max_parallel_executions_per_pod": max_parallel_executions_per_pod,
            "max_retries": max_retries,
            "ram_request": ram_request,
            "execution_timeout_s": execution_timeout_s,
            "schedule": schedule,
            "endpoint_url_path": endpoint_url_path,
            "inputs_mapping": [_as_dict(m) for m in inputs_mapping or []],
            "outputs_mapping": [_as_dict(m) for m in outputs_mapping or []],
        }
        spec = build_spec(**values)
        flow, directory, entrypoint = load_pipeline(pipeline)
        spec.check_pipeline_inputs(*_pipeline_parameters(flow))
        token = None
        if spec.execution_rule == ExecutionRule.endpoint.value:
            token = endpoint_token or new_token()
            spec.endpoint_token_hash = hash_token(token)
        elif endpoint_token is not None:
            raise SpecError("endpoint_token is only for endpoint deployments; remove it")
        pool = work_pool_name or self.work_pool_name
        async with self._client() as client:
            if await self._find_deployment(client, deployment_name) is not None:
                raise DeploymentExists(
                    f"a deployment named {deployment_name!r} exists already; choose another "
                    "name, or change it with update_deployment"
                )
            await _ensure_pool(client, pool)
            await _check_ram_fits(client, pool, spec, deployment_name)
            flow_id = await client.create_flow_from_name(flow.name)
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=deployment_name,
                work_pool_name=pool,
                entrypoint=entrypoint,
                path=str(directory),
                pull_steps=[_working_directory_step(directory)],
                job_variables=spec.job_variables(),
                schedules=spec.prefect_schedules(),
                description=description,
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                enforce_parameter_schema=False,
                tags=[TAG],
            )
            await ensure_endpoint_trigger(client, await client.read_deployment(deployment_id))
        view = await self.aget_deployment(deployment_name)
        if token is not None:
            view["endpoint_token"] = token
            self._remember_endpoint_token(deployment_name, view["endpoint_url_path"], token)
        return view

    async def aget_deployment(self, deployment_name: str) -> dict[str, Any]:
        """A deployment, with the RAM capacity of each live worker of its pool."""
        from prefect_pipedeploy.worker import read_capacities

        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            view = deployment_view(deployment, await read_pod_status(client, deployment.id))
            capacities = await read_capacities(client, deployment.work_pool_name or "")
        view["worker_ram_capacity"] = {w: format_mib(mib) for w, mib in sorted(capacities.items())}
        return view

    async def alist_deployments(self) -> list[dict[str, Any]]:
        async with self._client() as client:
            deployments = await read_all_deployments(client, work_pool_filter=_pipedeploy_pools())
            pods = {
                d.id: await read_pod_status(client, d.id)
                for d in deployments
                if (d.job_variables or {}).get("mode") == Mode.low_latency.value
            }
        return [
            deployment_view(d, pods.get(d.id)) for d in sorted(deployments, key=lambda d: d.name)
        ]

    async def aget_deployment_logs(self, deployment_name: str) -> list[str]:
        """The pod's own output (start-up, import errors, crashes): the last lines its worker
        published. Empty for elastic deployments, whose output belongs to each execution."""
        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            pod = await read_pod_status(client, deployment.id)
        return (pod or {}).get("log_tail", "").splitlines()

    async def aupdate_deployment(self, deployment_name: str, **changes: Any) -> dict[str, Any]:
        """Change settings of a deployment: any create_deployment setting, or `disabled`."""
        allowed = set(DeploymentSpec.model_fields) - {"endpoint_token_hash"}
        allowed |= {"description", "disabled"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise SpecError(
                f"update_deployment: unknown setting {', '.join(map(repr, unknown))}; "
                f"settings are {', '.join(sorted(allowed))}"
            )
        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            current = spec_from_job_variables(deployment.job_variables)
            values = current.model_dump(exclude_none=True)
            spec_changes = {k: v for k, v in changes.items() if k in DeploymentSpec.model_fields}
            for key in ("inputs_mapping", "outputs_mapping"):
                if key in spec_changes:
                    spec_changes[key] = [_as_dict(m) for m in spec_changes[key] or []]
            values.update(spec_changes)
            if values.get("execution_rule") == ExecutionRule.periodic.value:
                values.pop("endpoint_token_hash", None)
            spec = build_spec(**values)
            if "ram_request" in changes and deployment.work_pool_name:
                await _check_ram_fits(client, deployment.work_pool_name, spec, deployment_name)
            if spec.execution_rule == ExecutionRule.endpoint.value and not spec.endpoint_token_hash:
                raise SpecError(
                    "execution_rule: turning a deployment into an endpoint needs a token; "
                    "create a new endpoint deployment instead"
                )
            update: dict[str, Any] = {"job_variables": spec.job_variables()}
            if "description" in changes:
                update["description"] = changes["description"]
            if "disabled" in changes:
                update["paused"] = bool(changes["disabled"])
            await client.update_deployment(deployment.id, DeploymentUpdate(**update))
            if "schedule" in changes or "execution_rule" in changes:
                await _replace_schedules(client, deployment, spec)
            await ensure_endpoint_trigger(client, await client.read_deployment(deployment.id))
        return await self.aget_deployment(deployment_name)

    async def adelete_deployment(self, deployment_name: str) -> None:
        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            await delete_endpoint_trigger(client, deployment)  # Prefect would leave it behind
            await client.delete_deployment(deployment.id)
            await delete_pod_statuses(client, deployment.id)

    # ---- executions ---------------------------------------------------------------------------

    async def alist_pipeline_executions(
        self, deployment_name: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Executions, newest first; of one deployment when `deployment_name` is given."""
        async with self._client() as client:
            names: dict[UUID, str] = {}
            if deployment_name is not None:
                deployment = await self._deployment(client, deployment_name)
                names[deployment.id] = deployment.name
                deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            else:
                deployment_filter = None
            flow_runs = await client.read_flow_runs(
                deployment_filter=deployment_filter,
                work_pool_filter=_pipedeploy_pools(),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=limit,
            )
            for run in flow_runs:
                if run.deployment_id and run.deployment_id not in names:
                    try:
                        names[run.deployment_id] = (
                            await client.read_deployment(run.deployment_id)
                        ).name
                    except ObjectNotFound:
                        names[run.deployment_id] = None  # type: ignore[assignment]
        return [
            execution_view(run, names.get(run.deployment_id) if run.deployment_id else None)
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
            parameters = await seal_inputs(client, spec, inputs or {})
            try:
                flow_run = await create_run(
                    client, deployment.id, parameters=parameters, tags=[TAG]
                )
            except BaseException:
                await discard(client, sealed_keys(parameters))
                raise
        if wait_for_completion:
            await self.await_execution(flow_run.id, timeout_s)
        return await self.aget_pipeline_execution(flow_run.id)

    async def await_execution(self, execution_id: str | UUID, timeout_s: float = 300.0) -> None:
        """Wait until an execution is settled: final, and not about to be retried.

        A failed execution with retries left is re-queued by its worker within moments, so a
        Failed state counts as final only once it has lasted RETRY_GRACE_S.
        """
        import anyio

        max_retries: int | None = None
        failed_since: float | None = None
        with anyio.fail_after(timeout_s):
            async with self._client() as client:
                while True:
                    flow_run = await self._flow_run(client, execution_id)
                    state = flow_run.state
                    if state is not None and state.is_final():
                        retriable = state.type in (StateType.FAILED, StateType.CRASHED)
                        if retriable and max_retries is None and flow_run.deployment_id:
                            deployment = await client.read_deployment(flow_run.deployment_id)
                            max_retries = spec_from_job_variables(
                                deployment.job_variables
                            ).max_retries
                        if not retriable or not 1 <= flow_run.run_count <= (max_retries or 0):
                            return
                        failed_since = failed_since or time.monotonic()
                        if time.monotonic() - failed_since > RETRY_GRACE_S:
                            return
                    else:
                        failed_since = None
                    await anyio.sleep(0.1)

    async def aget_pipeline_execution(self, execution_id: str | UUID) -> dict[str, Any]:
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            name = None
            if flow_run.deployment_id:
                with contextlib.suppress(ObjectNotFound):
                    name = (await client.read_deployment(flow_run.deployment_id)).name
            view = execution_view(flow_run, name)
            view["outputs"] = await read_outputs(client, flow_run.id)
        return view

    async def aget_pipeline_execution_logs(self, execution_id: str | UUID) -> list[dict[str, Any]]:
        """The log lines of one execution, oldest first."""
        async with self._client() as client:
            flow_run = await self._flow_run(client, execution_id)
            logs = []
            offset = 0
            while True:
                page = await client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])),
                    sort=LogSort.TIMESTAMP_ASC,
                    limit=200,
                    offset=offset,
                )
                logs.extend(page)
                if len(page) < 200:
                    break
                offset += len(page)
        return [
            {
                "timestamp": _iso(log.timestamp),
                "level": _level_name(log.level),
                "message": log.message,
            }
            for log in logs
        ]

    # ---- lookups ------------------------------------------------------------------------------

    @staticmethod
    async def _find_deployment(client: PrefectClient, name: str) -> DeploymentResponse | None:
        found = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
            work_pool_filter=_pipedeploy_pools(),
            limit=2,
        )
        return found[0] if found else None

    async def _deployment(self, client: PrefectClient, name: str) -> DeploymentResponse:
        deployment = await self._find_deployment(client, name)
        if deployment is None:
            raise DeploymentNotFound(
                f"no deployment named {name!r}; list them with `pipedeploy deployment ls`"
            )
        return deployment

    @staticmethod
    async def _flow_run(client: PrefectClient, execution_id: str | UUID) -> FlowRun:
        try:
            run_id = UUID(str(execution_id))
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=1
            )
        except ValueError:
            runs = []
        if not runs:
            raise ExecutionNotFound(
                f"no execution with id {execution_id!r}; list them with `pipedeploy executions ls`"
            )
        return runs[0]

    # ---- sync twins ---------------------------------------------------------------------------

    def create_deployment(
        self, pipeline: Any, deployment_name: str, **kwargs: Any
    ) -> dict[str, Any]:
        return run_coro_as_sync(self.acreate_deployment(pipeline, deployment_name, **kwargs))

    def get_deployment(self, deployment_name: str) -> dict[str, Any]:
        return run_coro_as_sync(self.aget_deployment(deployment_name))

    def list_deployments(self) -> list[dict[str, Any]]:
        return run_coro_as_sync(self.alist_deployments())

    def get_deployment_logs(self, deployment_name: str) -> list[str]:
        return run_coro_as_sync(self.aget_deployment_logs(deployment_name))

    def update_deployment(self, deployment_name: str, **changes: Any) -> dict[str, Any]:
        return run_coro_as_sync(self.aupdate_deployment(deployment_name, **changes))

    def delete_deployment(self, deployment_name: str) -> None:
        run_coro_as_sync(self.adelete_deployment(deployment_name))

    def list_pipeline_executions(
        self, deployment_name: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return run_coro_as_sync(self.alist_pipeline_executions(deployment_name, limit))

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

    def get_pipeline_execution_logs(self, execution_id: str | UUID) -> list[dict[str, Any]]:
        return run_coro_as_sync(self.aget_pipeline_execution_logs(execution_id))


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _as_dict(mapping: Any) -> dict[str, Any]:
    if isinstance(mapping, (InputSource, OutputDestination)):
        return mapping.model_dump(exclude_unset=True)
    return dict(mapping)


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str) or any(c in name for c in "/%&><"):
        raise SpecError(
            f"deployment_name {name!r} is not valid; use letters, digits, '-', '_' and '.'"
        )


def _pipedeploy_pools() -> WorkPoolFilter:
    return WorkPoolFilter(type=WorkPoolFilterType(any_=[WORKER_TYPE]))


def _working_directory_step(directory: Path) -> dict[str, Any]:
    return {"prefect.deployments.steps.set_working_directory": {"directory": str(directory)}}


async def _ensure_pool(client: PrefectClient, name: str) -> None:
    """Create the work pool with the pipedeploy template when it does not exist."""
    if name.lower().startswith("prefect"):
        raise SpecError(
            f"work_pool_name: {name!r} starts with 'prefect', which Prefect reserves; "
            "choose another pool name"
        )
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        from prefect_pipedeploy.worker import PipeDeployWorker

        await client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type=WORKER_TYPE,
                base_job_template=PipeDeployWorker.get_default_base_job_template(),
            ),
            overwrite=False,
        )
        return
    if pool.type != WORKER_TYPE:
        raise SpecError(
            f"work_pool_name: pool {name!r} has type {pool.type!r}; pipedeploy deployments "
            f"need a pool of type {WORKER_TYPE!r}"
        )


async def _check_ram_fits(
    client: PrefectClient, pool: str, spec: DeploymentSpec, deployment_name: str
) -> None:
    """Refuse a RAM request larger than the pool's RAM cap, or than every known worker's."""
    from prefect_pipedeploy.admission import check_fits_capacity
    from prefect_pipedeploy.worker import read_capacities

    what = f"deployment {deployment_name!r}"
    check_fits_cap(spec.ram_request_mib, await read_pool_ram_cap(client, pool), what)
    capacities = await read_capacities(client, pool)
    if capacities:
        check_fits_capacity(spec.ram_request_mib, max(capacities.values()), what)


async def _replace_schedules(
    client: PrefectClient, deployment: DeploymentResponse, spec: DeploymentSpec
) -> None:
    for schedule in deployment.schedules or []:
        await client.delete_deployment_schedule(deployment.id, schedule.id)
    new = spec.prefect_schedules()
    if new:
        await client.create_deployment_schedules(
            deployment.id, [(s.schedule, s.active) for s in new]
        )


def _level_name(level: int) -> str:
    return logging.getLevelName(level)
