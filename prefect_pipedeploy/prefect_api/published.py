"""State the workers publish for the SDK to read: pod statuses and worker RAM capacities.

For: one Prefect variable per (deployment, worker) holding that worker's pod status and the
tail of its output (`pipedeploy_pod_<deployment hex>_<worker hash>`), and one variable per pool
holding each worker's RAM capacity (`pipedeploy_capacity_<pool hash>`), which also shows in the
pool's UI form. Not for: deciding a deployment's status from them (`status`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.client.schemas.objects import Variable
from prefect.exceptions import ObjectNotFound

from prefect_pipedeploy._compat import read_variables_by_prefix
from prefect_pipedeploy.sizes import format_mib
from prefect_pipedeploy.status import merge_pod_statuses

STATUS_VARIABLE_PREFIX = "pipedeploy_pod_"


def status_variable_name(deployment_id: UUID, worker_name: str) -> str:
    """The variable one worker publishes its pod of a deployment in (one per worker)."""
    worker = hashlib.sha256(worker_name.encode()).hexdigest()[:8]
    return f"{STATUS_VARIABLE_PREFIX}{deployment_id.hex}_{worker}"


async def read_status_variables(client: PrefectClient, deployment_id: UUID) -> list[Variable]:
    """Every worker's status variable of the deployment's pods."""
    return await read_variables_by_prefix(client, f"{STATUS_VARIABLE_PREFIX}{deployment_id.hex}")


async def publish_pod_status(
    client: PrefectClient, deployment_id: UUID, worker_name: str, value: dict[str, Any]
) -> None:
    """Write one worker's status of its pod of a deployment (created on first use)."""
    name = status_variable_name(deployment_id, worker_name)
    try:
        await client.update_variable(VariableUpdate(name=name, value=value))
    except (ObjectNotFound, httpx.HTTPStatusError) as exc:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code != 404:
            raise
        await client.create_variable(VariableCreate(name=name, value=value))


async def forget_pod_status(client: PrefectClient, deployment_id: UUID, worker_name: str) -> None:
    """Delete one worker's status of a deployment's pod (gone already is fine)."""
    with contextlib.suppress(ObjectNotFound):
        await client.delete_variable_by_name(status_variable_name(deployment_id, worker_name))


async def read_pod_status(client: PrefectClient, deployment_id: UUID) -> dict[str, Any] | None:
    """The deployment's pod status as the workers last published it (see `merge_pod_statuses`),
    or None when no worker published any."""
    variables = await read_status_variables(client, deployment_id)
    return merge_pod_statuses([v.value for v in variables if isinstance(v.value, dict)])


async def delete_pod_statuses(client: PrefectClient, deployment_id: UUID) -> None:
    """Forget a deleted deployment's pod statuses."""
    for variable in await read_status_variables(client, deployment_id):
        with contextlib.suppress(ObjectNotFound):
            await client.delete_variable_by_name(variable.name)


def capacity_variable_name(pool: str) -> str:
    return "pipedeploy_capacity_" + hashlib.sha256(pool.encode()).hexdigest()[:16]


async def publish_capacity(client: Any, pool: str, worker: str, capacity_mib: int) -> None:
    """Record this worker's RAM capacity where the SDK checks new deployments against it."""
    name = capacity_variable_name(pool)
    now = datetime.datetime.now(datetime.timezone.utc)
    variable = await client.read_variable_by_name(name)
    workers = (
        dict(variable.value) if variable is not None and isinstance(variable.value, dict) else {}
    )
    workers[worker] = {"capacity_mib": capacity_mib, "updated": now.isoformat()}
    fresh = {
        k: v
        for k, v in workers.items()
        if (now - datetime.datetime.fromisoformat(v["updated"])).total_seconds() < 600
    }
    if variable is None:
        await client.create_variable(VariableCreate(name=name, value=fresh))
    else:
        await client.update_variable(VariableUpdate(name=name, value=fresh))
    await _show_capacity_in_pool_form(client, pool, fresh)


async def _show_capacity_in_pool_form(client: Any, pool: str, workers: dict[str, Any]) -> None:
    """Say in the pool's UI form, under ram_request, how much RAM its workers hand out."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    work_pool = await client.read_work_pool(pool)
    template = work_pool.base_job_template or {}
    field = template.get("variables", {}).get("properties", {}).get("ram_request")
    if field is None:
        return
    base = field.get("description", "").split(" Workers of this pool")[0]
    held = ", ".join(f"{w} {format_mib(v['capacity_mib'])}" for w, v in sorted(workers.items()))
    description = f"{base} Workers of this pool hand out: {held}."
    if field.get("description") != description:
        field["description"] = description
        await client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))


async def read_capacities(client: Any, pool: str) -> dict[str, int]:
    """The RAM capacity of each worker of `pool` seen in the last ten minutes."""
    variable = await client.read_variable_by_name(capacity_variable_name(pool))
    if variable is None or not isinstance(variable.value, dict):
        return {}
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        worker: int(v["capacity_mib"])
        for worker, v in variable.value.items()
        if (now - datetime.datetime.fromisoformat(v["updated"])).total_seconds() < 600
    }
