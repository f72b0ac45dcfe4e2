"""The SDK's deployment verbs: create, get, list, update, delete, and a pod's own logs.

For: `DeploymentVerbs`, mixed into `PipeDeploy`; each verb has an async core and a sync twin,
and takes the reference platform's parameters in its order beside ours (`compat`).
Not for: executions (`executions`), endpoint calls and tokens (`endpoints`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import parameter_schema

from prefect_pipedeploy.datastore.code import folder_files, ship_folder
from prefect_pipedeploy.datastore.configured import (
    DATA_STORE_VARIABLE,
    aload_data_store,
    data_store_reference,
)
from prefect_pipedeploy.engine.loader import load_pipeline
from prefect_pipedeploy.exceptions import (
    DeploymentExists,
    SpecError,
)
from prefect_pipedeploy.iomapping import pipeline_inputs_of
from prefect_pipedeploy.prefect_api.busy import retry_busy
from prefect_pipedeploy.prefect_api.deployments import read_all_deployments
from prefect_pipedeploy.prefect_api.poolcap import (
    check_fits_cap,
    read_pool_ram_cap,
)
from prefect_pipedeploy.prefect_api.published import (
    delete_pod_statuses,
    read_capacities,
    read_pod_status,
)
from prefect_pipedeploy.prefect_api.triggers import (
    delete_endpoint_trigger,
    ensure_endpoint_trigger,
)
from prefect_pipedeploy.sdk.base import TAG, Verbs, pipedeploy_pools
from prefect_pipedeploy.sdk.compat import (
    UNSET,
    check_timeout,
    latest_execution_id,
    wait_decision,
    window_lines,
)
from prefect_pipedeploy.sdk.views import deployment_view
from prefect_pipedeploy.settings import WORKER_TYPE
from prefect_pipedeploy.sizes import format_mib
from prefect_pipedeploy.spec import (
    DeploymentSpec,
    DockerSettings,
    ExecutionRule,
    InputSource,
    Mode,
    OutputDestination,
    build_spec,
    spec_from_job_variables,
)
from prefect_pipedeploy.tokens import hash_token, new_token
from prefect_pipedeploy.worker.models import base_job_template


class DeploymentVerbs(Verbs):
    """Deployment verbs; mixed into `PipeDeploy`."""

    async def acreate_deployment(
        self,
        pipeline: Any = None,
        deployment_name: str = "",
        execution_rule: str = "endpoint",
        mode: str = "elastic",
        schedule: Any = None,
        endpoint_url_path: str | None = None,
        inputs_mapping: list[InputSource | dict[str, Any]] | None = None,
        outputs_mapping: list[OutputDestination | dict[str, Any]] | None = None,
        description: str | None = None,
        enable_parallel_executions: bool = False,
        max_parallel_executions_per_pod: int | None = 6,
        ram_request: str | None = "512MiB",
        gpu_request: int | None = None,
        wait_for_completion: bool = False,
        timeout_s: float | None = None,
        execution_timeout_s: float | None = None,
        endpoint_token: str | None = None,
        max_retries: int = 1,
        work_pool_name: str | None = None,
        code_folder: str | Path | None = None,
        runtime: str = "process",
        docker: DockerSettings | dict[str, Any] | None = None,
        *,
        pipeline_name: Any = None,
    ) -> dict[str, Any]:
        """Create a deployment of `pipeline`; returns what get_deployment returns, plus the
        endpoint token of an endpoint deployment (shown here and nowhere else).

        The parameters come in the platform's order (`pipeline_name=` names the pipeline as
        the platform's client does: a flow or "file.py:function" here). With
        `wait_for_completion`, returns once the deployment is ready (`get_deployment`);
        `gpu_request` must stay None or 0: workers schedule no GPUs.

        With a data store configured, the pipeline's folder (its file's directory, or
        `code_folder`, which must hold the file) is packed and stored in it by digest, and
        every run fetches it from there (`datastore.code`): the deployment runs on any worker
        of its pool, with or without the folder on its disk. Without one, runs import the
        pipeline from the folder on the worker's disk.

        `runtime="docker"` runs each execution (elastic mode) in a container of
        `docker["image"]` (README, "Run in Docker containers")."""
        _check_name(deployment_name)
        check_timeout(timeout_s)
        pipeline = _one_pipeline(pipeline, pipeline_name)
        if gpu_request:
            raise SpecError(
                f"gpu_request: workers schedule no GPUs (got {gpu_request}); remove it, and "
                "run GPU pipelines on a worker whose machine has the GPU"
            )
        values: dict[str, Any] = {
            "execution_rule": execution_rule,
            "mode": mode,
            "enable_parallel_executions": bool(enable_parallel_executions),
            "max_parallel_executions_per_pod": max_parallel_executions_per_pod or 6,
            "max_retries": max_retries,
            "ram_request": ram_request or "512MiB",
            "execution_timeout_s": execution_timeout_s,
            "schedule": schedule,
            "endpoint_url_path": endpoint_url_path,
            "inputs_mapping": [_as_dict(m) for m in inputs_mapping or []],
            "outputs_mapping": [_as_dict(m) for m in outputs_mapping or []],
            "runtime": runtime,
            "docker": docker.model_dump() if isinstance(docker, DockerSettings) else docker,
        }
        spec = build_spec(**values)
        flow, directory, entrypoint = load_pipeline(pipeline)
        spec.check_pipeline_inputs(*pipeline_inputs_of(flow))
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
            await _check_pool_has_runtime(client, pool, spec)
            await _check_ram_fits(client, pool, spec, deployment_name)
            code = await code_source(client, directory, entrypoint, code_folder)
            flow_id = await client.create_flow_from_name(flow.name)
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=deployment_name,
                work_pool_name=pool,
                entrypoint=code.entrypoint,
                path=code.path,
                pull_steps=code.pull_steps,
                job_variables=spec.job_variables(),
                schedules=spec.prefect_schedules(),
                # Prefect 3.9.1's DeploymentCreate turns None into the text "None": "" is none
                description=description or "",
                # as `prefect deploy` stores it, so both make the same deployment
                parameter_openapi_schema=parameter_schema(flow).model_dump(exclude_unset=True),
                enforce_parameter_schema=False,
                tags=[TAG],
            )
            await ensure_endpoint_trigger(client, await client.read_deployment(deployment_id))
        view = await self.aget_deployment(deployment_name, wait_for_completion, timeout_s)
        if token is not None:
            view["endpoint_token"] = token
            self._remember_endpoint_token(deployment_name, view["endpoint_url_path"], token)
        return view

    async def aget_deployment(
        self,
        deployment_name: str,
        wait_for_completion: bool = False,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """A deployment, with the RAM capacity of each live worker of its pool and the id of
        its latest execution (`last_execution_id`).

        With `wait_for_completion`, reads it until it is ready: `up` (its pods take
        executions), `standby` (elastic: ready at once) or `disabled`; raises
        DeploymentCreationFailed on `creation_failed`, DeploymentNotReady after `timeout_s`
        (None: as long as it takes)."""
        import anyio

        check_timeout(timeout_s)
        started = anyio.current_time()
        async with self._client() as client:
            while True:
                deployment = await self._deployment(client, deployment_name)
                view = deployment_view(deployment, await read_pod_status(client, deployment.id))
                if not wait_for_completion:
                    break
                decision = wait_decision(
                    deployment_name,
                    view["status"],
                    view["status_message"],
                    anyio.current_time() - started,
                    timeout_s,
                )
                if decision.error is not None:
                    raise decision.error
                if decision.done:
                    break
                await anyio.sleep(0.5)
            capacities = await read_capacities(client, deployment.work_pool_name or "")
            view["last_execution_id"] = await latest_execution_id(client, deployment.id)
        view["worker_ram_capacity"] = {w: format_mib(mib) for w, mib in sorted(capacities.items())}
        return view

    async def alist_deployments(self) -> list[dict[str, Any]]:
        async with self._client() as client:
            deployments = await read_all_deployments(client, work_pool_filter=pipedeploy_pools())
            pods = {
                d.id: await read_pod_status(client, d.id)
                for d in deployments
                if (d.job_variables or {}).get("mode") == Mode.low_latency.value
            }
        return [
            deployment_view(d, pods.get(d.id)) for d in sorted(deployments, key=lambda d: d.name)
        ]

    async def aget_deployment_logs(
        self,
        deployment_name: str,
        from_datetime: datetime | None = None,
        to_datetime: datetime | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """The pod's own output (start-up, import errors, crashes): the last lines its worker
        published, those dated in [`from_datetime`, `to_datetime`] (`compat.window_lines`),
        the last `limit`. Empty for elastic deployments, whose output belongs to each
        execution."""
        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            pod = await read_pod_status(client, deployment.id)
        lines = (pod or {}).get("log_tail", "").splitlines()
        return window_lines(lines, from_datetime, to_datetime, limit)

    async def aupdate_deployment(
        self,
        deployment_name: str,
        is_enabled: Any = UNSET,
        inputs_mapping: Any = UNSET,
        outputs_mapping: Any = UNSET,
        schedule: Any = UNSET,
        wait_for_completion: bool = False,
        timeout_s: float | None = None,
        **changes: Any,
    ) -> dict[str, Any]:
        """Change settings of a deployment: any create_deployment setting, `is_enabled`
        (the platform's; `disabled` is ours), or its code: `pipeline=` (with `code_folder=`)
        ships the new code as create_deployment does, and its pods are re-created with it.
        The first parameters come in the platform's order; `wait_for_completion` and
        `timeout_s` as in get_deployment. A mapping given replaces the whole list; None
        leaves it as it is."""
        check_timeout(timeout_s)
        given = {
            "inputs_mapping": inputs_mapping,
            "outputs_mapping": outputs_mapping,
            "schedule": schedule,
        }
        # the platform's None is "no change" for a mapping (an empty list clears one)
        changes.update(
            {
                key: value
                for key, value in given.items()
                if value is not UNSET and (value is not None or key == "schedule")
            }
        )
        if is_enabled is not UNSET and is_enabled is not None:
            if "disabled" in changes and bool(changes["disabled"]) == bool(is_enabled):
                raise SpecError(
                    f"is_enabled={is_enabled} and disabled={changes['disabled']} disagree; "
                    "give one of them"
                )
            changes["disabled"] = not is_enabled
        allowed = set(DeploymentSpec.model_fields) - {"endpoint_token_hash"}
        allowed |= {"description", "disabled", "pipeline", "code_folder"}
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
            if spec.runtime != "process" and deployment.work_pool_name:
                await _check_pool_has_runtime(client, deployment.work_pool_name, spec)
            if "ram_request" in changes and deployment.work_pool_name:
                await _check_ram_fits(client, deployment.work_pool_name, spec, deployment_name)
            if spec.execution_rule == ExecutionRule.endpoint.value and not spec.endpoint_token_hash:
                raise SpecError(
                    "execution_rule: turning a deployment into an endpoint needs a token; "
                    "create a new endpoint deployment instead"
                )
            update: dict[str, Any] = {"job_variables": spec.job_variables()}
            if "pipeline" in changes:
                flow, directory, entrypoint = load_pipeline(changes["pipeline"])
                spec.check_pipeline_inputs(*pipeline_inputs_of(flow))
                code = await code_source(client, directory, entrypoint, changes.get("code_folder"))
                update.update(
                    entrypoint=code.entrypoint,
                    path=code.path,
                    pull_steps=code.pull_steps,
                    parameter_openapi_schema=parameter_schema(flow).model_dump(exclude_unset=True),
                )
            elif "code_folder" in changes:
                raise SpecError("code_folder: give the pipeline as well (pipeline=...)")
            if "description" in changes:
                update["description"] = changes["description"] or ""
            if "disabled" in changes:
                update["paused"] = bool(changes["disabled"])
            # pausing deletes the scheduled runs: a long write, often refused by a busy SQLite
            await retry_busy(
                client, lambda: client.update_deployment(deployment.id, DeploymentUpdate(**update))
            )
            if "schedule" in changes or "execution_rule" in changes:
                await _replace_schedules(client, deployment, spec)
            await ensure_endpoint_trigger(client, await client.read_deployment(deployment.id))
        return await self.aget_deployment(deployment_name, wait_for_completion, timeout_s)

    async def adelete_deployment(self, deployment_name: str) -> dict[str, Any]:
        """Delete a deployment (its runs stay, as executions without a deployment); returns
        what was deleted, as the platform does: {"name", "execution_rule"}."""
        async with self._client() as client:
            deployment = await self._deployment(client, deployment_name)
            await delete_endpoint_trigger(client, deployment)  # Prefect would leave it behind
            await retry_busy(client, lambda: client.delete_deployment(deployment.id))
            await delete_pod_statuses(client, deployment.id)
        rule = spec_from_job_variables(deployment.job_variables).execution_rule
        return {"name": deployment.name, "execution_rule": rule}

    # The sync twins take what their async cores take, positionally or by keyword.

    def create_deployment(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_coro_as_sync(self.acreate_deployment(*args, **kwargs))

    def get_deployment(
        self,
        deployment_name: str,
        wait_for_completion: bool = False,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        return run_coro_as_sync(
            self.aget_deployment(deployment_name, wait_for_completion, timeout_s)
        )

    def list_deployments(self) -> list[dict[str, Any]]:
        return run_coro_as_sync(self.alist_deployments())

    def get_deployment_logs(
        self,
        deployment_name: str,
        from_datetime: datetime | None = None,
        to_datetime: datetime | None = None,
        limit: int | None = None,
    ) -> list[str]:
        return run_coro_as_sync(
            self.aget_deployment_logs(deployment_name, from_datetime, to_datetime, limit)
        )

    def update_deployment(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_coro_as_sync(self.aupdate_deployment(*args, **kwargs))

    def delete_deployment(self, deployment_name: str) -> dict[str, Any]:
        return run_coro_as_sync(self.adelete_deployment(deployment_name))


def _as_dict(mapping: Any) -> dict[str, Any]:
    if isinstance(mapping, (InputSource, OutputDestination)):
        return mapping.model_dump(exclude_unset=True)
    if callable(getattr(mapping, "to_dict", None)):  # the platform client's InputSource
        return dict(mapping.to_dict())
    return dict(mapping)


def _one_pipeline(pipeline: Any, pipeline_name: Any) -> Any:
    if pipeline is not None and pipeline_name is not None and pipeline is not pipeline_name:
        raise SpecError("give the pipeline once: pipeline=... or pipeline_name=..., not both")
    found = pipeline if pipeline is not None else pipeline_name
    if found is None:
        raise SpecError("give the pipeline: a flow, or 'file.py:function' (pipeline=...)")
    return found


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str) or any(c in name for c in "/%&><"):
        raise SpecError(
            f"deployment_name {name!r} is not valid; use letters, digits, '-', '_' and '.'"
        )


@dataclass(frozen=True)
class CodeSource:
    """Where a deployment's runs get the pipeline's code: its pull steps, the entrypoint
    relative to the folder those steps leave them in, and the folder it came from."""

    pull_steps: list[dict[str, Any]]
    entrypoint: str
    path: str


async def code_source(
    client: PrefectClient,
    directory: Path,
    entrypoint: str,
    code_folder: str | Path | None = None,
) -> CodeSource:
    """The code of a deployment of the pipeline `entrypoint` ("file.py:function" in
    `directory`): `code_folder` (default: `directory`) shipped to the configured data store,
    or, with none configured, that folder on the worker's disk."""
    folder = Path(code_folder).expanduser().resolve() if code_folder is not None else directory
    file_name, _, function = entrypoint.rpartition(":")
    pipeline_file = directory / file_name
    try:
        relative = pipeline_file.relative_to(folder).as_posix()
    except ValueError:
        raise SpecError(
            f"code_folder {str(folder)!r} does not hold the pipeline's file "
            f"{str(pipeline_file)!r}; give a folder that contains it"
        ) from None
    reference = data_store_reference()
    if reference is None:
        if code_folder is not None:
            raise SpecError(
                "code_folder: the folder is shipped through the data store, and none is "
                f"configured; set {DATA_STORE_VARIABLE} (`pipedeploy up` makes a local one)"
            )
        step = {"prefect.deployments.steps.set_working_directory": {"directory": str(folder)}}
        return CodeSource([step], f"{relative}:{function}", str(folder))
    if relative not in folder_files(folder):
        raise SpecError(
            f"the pipeline's file {relative!r} is excluded from code_folder {str(folder)!r} "
            "(by its .gitignore or .pipedeployignore); ship it by removing the pattern"
        )
    store = await aload_data_store(reference, client)
    step = await ship_folder(folder, store, reference)
    return CodeSource([step], f"{relative}:{function}", str(folder))


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
        try:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type=WORKER_TYPE, base_job_template=base_job_template()),
                overwrite=False,
            )
            return
        except ObjectAlreadyExists:  # a worker (or another client) made it meanwhile
            pool = await client.read_work_pool(name)
    if pool.type != WORKER_TYPE:
        raise SpecError(
            f"work_pool_name: pool {name!r} has type {pool.type!r}; pipedeploy deployments "
            f"need a pool of type {WORKER_TYPE!r}"
        )


async def _check_pool_has_runtime(client: PrefectClient, pool: str, spec: DeploymentSpec) -> None:
    """Refuse runtime docker on a pool whose job template predates it: its runs would quietly
    run as processes."""
    if spec.runtime == "process":
        return
    template = (await client.read_work_pool(pool)).base_job_template or {}
    if "runtime" not in (template.get("job_configuration") or {}):
        raise SpecError(
            f"runtime: work pool {pool!r} was made before runtime docker existed (its job "
            "template has no runtime field); use a new pool, or delete this one "
            f"(`prefect work-pool delete {pool}`) and let create_deployment make it again"
        )


async def _check_ram_fits(
    client: PrefectClient, pool: str, spec: DeploymentSpec, deployment_name: str
) -> None:
    """Refuse a RAM request larger than the pool's RAM cap, or than every known worker's."""
    from prefect_pipedeploy.admission import check_fits_capacity

    what = f"deployment {deployment_name!r}"
    check_fits_cap(spec.ram_request_mib, await read_pool_ram_cap(client, pool), what)
    capacities = await read_capacities(client, pool)
    if capacities:
        check_fits_capacity(spec.ram_request_mib, max(capacities.values()), what)


async def _replace_schedules(
    client: PrefectClient, deployment: DeploymentResponse, spec: DeploymentSpec
) -> None:
    for schedule_id in [schedule.id for schedule in deployment.schedules or []]:
        await retry_busy(
            client,
            functools.partial(client.delete_deployment_schedule, deployment.id, schedule_id),
        )
    new = [(s.schedule, s.active) for s in spec.prefect_schedules()]
    if new:
        await retry_busy(client, lambda: client.create_deployment_schedules(deployment.id, new))
