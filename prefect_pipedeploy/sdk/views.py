"""Deployments and executions as the SDK returns them: plain JSON-friendly dicts (pure).

For: `deployment_view` and `execution_view`. Not for: reading them (`deployments`, `executions`).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.datastore.code import shipped_code
from prefect_pipedeploy.spec import (
    Mode,
    spec_from_job_variables,
)
from prefect_pipedeploy.status import deployment_status, execution_status

_SETTINGS_FIELDS = (
    "enable_parallel_executions",
    "max_parallel_executions_per_pod",
    "max_retries",
    "ram_request",
    "execution_timeout_s",
)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def deployment_view(
    deployment: DeploymentResponse, pod: dict[str, Any] | None = None
) -> dict[str, Any]:
    spec = spec_from_job_variables(deployment.job_variables)
    return {
        "id": str(deployment.id),
        "name": deployment.name,
        "pipeline": deployment.entrypoint,
        "pipeline_path": deployment.path,
        # the shipped folder (key, sha256, data_store), or None: the code runs from
        # `pipeline_path` (no data store was configured, or the deployment has its own steps)
        "code": shipped_code(deployment.pull_steps),
        "work_pool_name": deployment.work_pool_name,
        "execution_rule": spec.execution_rule,
        "mode": spec.mode,
        "status": deployment_status(deployment, spec, pod),
        "status_message": (pod or {}).get("message") if spec.mode != Mode.elastic.value else None,
        # a low-latency deployment has a pod on each worker of its pool: each one's status
        "pods": (pod or {}).get("pods", []) if spec.mode != Mode.elastic.value else [],
        "description": deployment.description or None,  # "" is how none is stored
        "schedule": spec.schedule.model_dump() if spec.schedule else None,
        "endpoint_url_path": spec.endpoint_path(deployment.name),
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
        "status": execution_status(flow_run),
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


def _level_name(level: int) -> str:
    return logging.getLevelName(level)
