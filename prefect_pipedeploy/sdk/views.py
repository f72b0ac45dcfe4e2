"""Deployments and executions as the SDK returns them: plain JSON-friendly dicts (pure).

For: `deployment_view` and `execution_view`, with our keys and the reference platform's beside
them (`created_at`, `is_enabled`, `end_date`, ...), and the pure pieces
they use: `pipeline_name_of`, `readable_schedule`.
Not for: reading them (`deployments`, `executions`), or what needs another read
(`last_execution_id`: `compat.latest_execution_id`).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.datastore.code import shipped_code
from prefect_pipedeploy.spec import (
    BasicSchedule,
    ExecutionRule,
    Mode,
    Schedule,
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


def pipeline_name_of(entrypoint: str | None) -> str | None:
    """A deployment's pipeline name: its entrypoint's function ("pipe.py:score" -> "score")."""
    if not entrypoint:
        return None
    return entrypoint.rpartition(":")[2] or entrypoint


_CRON_DAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


def _plural(every: int, unit: str) -> str:
    return f"every {unit}" if every == 1 else f"every {every} {unit}s"


def _cron_text(cron: str) -> str:
    """Common cron forms in words; any other as the expression itself."""
    fields = cron.split()
    if len(fields) != 5:
        return f"cron {cron!r} (UTC)"
    minute, hour, day, month, weekday = fields
    if (day, month, weekday) == ("*", "*", "*"):
        if hour == "*":
            if minute == "*":
                return "every minute"
            if minute.startswith("*/") and minute[2:].isdigit():
                return _plural(int(minute[2:]), "minute")
            if minute.isdigit():
                return f"every hour at minute {int(minute)}"
        if hour.startswith("*/") and hour[2:].isdigit() and minute.isdigit():
            return f"{_plural(int(hour[2:]), 'hour')} at minute {int(minute)}"
    if minute.isdigit() and hour.isdigit() and month == "*":
        at = f"at {int(hour):02d}:{int(minute):02d} UTC"
        if (day, weekday) == ("*", "*"):
            return f"every day {at}"
        if day == "*" and weekday.isdigit() and int(weekday) <= 7:
            return f"every {_CRON_DAYS[int(weekday) % 7]} {at}"
        if weekday == "*" and day.isdigit():
            return f"on day {int(day)} of every month {at}"
    return f"cron {cron!r} (UTC)"


def readable_schedule(schedule: Schedule | None) -> str | None:
    """A schedule in words ("every 5 minutes", "every day at 00:00 UTC"); None without one."""
    if schedule is None:
        return None
    if isinstance(schedule, BasicSchedule):
        return _plural(schedule.every, schedule.unit.removesuffix("s"))
    return _cron_text(schedule.cron)


def deployment_view(
    deployment: DeploymentResponse, pod: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A deployment with our keys and the platform's (`created_at`, `updated_at`,
    `is_enabled`, `pipeline_name`, `human_readable_schedule`, the settings at
    the top level). `last_execution_id` needs a read of the runs: `get_deployment` adds it."""
    spec = spec_from_job_variables(deployment.job_variables)
    name = pipeline_name_of(deployment.entrypoint)
    periodic = spec.execution_rule == ExecutionRule.periodic.value
    return {
        "id": str(deployment.id),
        "name": deployment.name,
        # ours, kept: where the code is ("file.py:function", also as `entrypoint`); the
        # platform's `pipeline: {"name"}` is `pipeline_name` here (one key cannot be both)
        "pipeline": deployment.entrypoint,
        "pipeline_name": name,
        "entrypoint": deployment.entrypoint,
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
        "settings": {field: getattr(spec, field) for field in _SETTINGS_FIELDS},
        **{field: getattr(spec, field) for field in _SETTINGS_FIELDS},  # the platform's place
        "human_readable_schedule": readable_schedule(spec.schedule) if periodic else None,
        "is_enabled": not deployment.paused,
        "created": _iso(deployment.created),
        "updated": _iso(deployment.updated),
        "created_at": _iso(deployment.created),
        "updated_at": _iso(deployment.updated),
    }


def execution_view(
    flow_run: FlowRun, deployment_name: str | None = None, pipeline_name: str | None = None
) -> dict[str, Any]:
    """An execution with our keys and the platform's (`pipeline_name`, `created_at`,
    `end_date`)."""
    state = flow_run.state
    return {
        "execution_id": str(flow_run.id),
        "deployment_name": deployment_name,
        "pipeline_name": pipeline_name,
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
        "created_at": _iso(flow_run.created),
        "end_date": _iso(flow_run.end_time),
    }


def _level_name(level: int) -> str:
    return logging.getLevelName(level)
