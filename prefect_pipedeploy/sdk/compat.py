"""The reference platform's ways of calling the SDK: its keywords, its waits, its return shapes.

For: what lets `PipeDeploy` be called as the platform's client is (`craft-ai-sdk`) beside our
own verbs: the `UNSET` marker of keywords that were not given, the pure decisions (when a
deployment waited for is ready, which pod log lines a window keeps, which data-store path a
call names), the platform's dicts of an execution's input and output, and
`latest_execution_id`, the one read behind a deployment's `last_execution_id` (the gateway's
platform routes use it too). README.md, "Moving from the reference platform", lists every
verb and the differences on purpose.
Not for: the verbs themselves (`deployments`, `executions`, `datastore`), or the views every
caller gets (`views`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
)
from prefect.client.schemas.sorting import FlowRunSort

from prefect_pipedeploy.exceptions import (
    DeploymentCreationFailed,
    DeploymentNotReady,
    SpecError,
)
from prefect_pipedeploy.spec import DeploymentSpec, ExecutionRule, InputSource, OutputDestination


class _Unset:
    """A keyword the caller did not give (None is a value some verbs take)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


# -- waiting for a deployment --------------------------------------------------------------------

#: Statuses a wait ends on: the pods take executions (`up`), an elastic deployment needs none
#: (`standby`), or nothing will come up until it is enabled (`disabled`).
READY_STATUSES = ("up", "standby", "disabled")


@dataclass(frozen=True)
class WaitDecision:
    """What a wait for a deployment does after one read: `done`, or an `error` to raise."""

    done: bool
    error: Exception | None = None


def wait_decision(
    name: str, status: str, message: str | None, elapsed_s: float, timeout_s: float | None
) -> WaitDecision:
    """Whether a wait for deployment `name` (read as `status`, `message`) after `elapsed_s`
    seconds is over (`READY_STATUSES`), failed (`creation_failed`, or the timeout), or goes
    on (`creation_pending`, `down_retrying`: the worker tries again)."""
    if status in READY_STATUSES:
        return WaitDecision(done=True)
    if status == "creation_failed":
        return WaitDecision(
            done=True,
            error=DeploymentCreationFailed(
                f"deployment {name!r} failed to start its pod: {message or 'no message'}; read "
                f"its output with get_deployment_logs({name!r}), fix the pipeline and ship it "
                f"again with update_deployment({name!r}, pipeline=...)"
            ),
        )
    if timeout_s is not None and elapsed_s >= timeout_s:
        return WaitDecision(
            done=True,
            error=DeploymentNotReady(
                f"deployment {name!r} is still {status} after {timeout_s:g} s"
                f"{f' ({message})' if message else ''}; check that a worker serves its pool "
                f"(`pipedeploy worker`), then wait again with get_deployment({name!r}, "
                "wait_for_completion=True, timeout_s=...)"
            ),
        )
    return WaitDecision(done=False)


def check_timeout(timeout_s: float | None) -> None:
    if timeout_s is not None and timeout_s <= 0:
        raise SpecError(
            f"timeout_s must be more than 0, or None to wait as long as it takes; got {timeout_s}"
        )


async def latest_execution_id(client: PrefectClient, deployment_id: UUID) -> str | None:
    """The id of a deployment's most recent execution: of its runs due by now (started or
    waiting), the one due last; None when it has none. Runs a schedule made ahead of time
    are not executions yet."""
    due: dict[str, Any] = {"before_": datetime.now(timezone.utc)}  # Prefect types it DateTime
    runs = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(**due)),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    return str(runs[0].id) if runs else None


# -- a pod's log lines -----------------------------------------------------------------------------

_STAMP_RE = re.compile(
    r"^\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
)


def _stamp(line: str) -> datetime | None:
    match = _STAMP_RE.match(line)
    if not match:
        return None
    try:
        stamp = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)  # the platform reads naive times as UTC


def window_lines(
    lines: list[str],
    from_datetime: datetime | None = None,
    to_datetime: datetime | None = None,
    limit: int | None = None,
) -> list[str]:
    """The lines of a pod's output in [`from_datetime`, `to_datetime`], the last `limit`.

    A pod's output is the pipeline's own stdout and stderr: a line is dated when it starts
    with an ISO date-time; an undated line (a traceback's) has the date of the dated line
    before it, and those before any dated line are kept only without `from_datetime`."""
    if limit is not None and limit < 0:
        raise SpecError(f"limit must be 0 or more, got {limit}")
    start, end = _aware(from_datetime), _aware(to_datetime)
    kept: list[str] = []
    current: datetime | None = None
    for line in lines:
        current = _stamp(line) or current
        if current is None:
            if start is None:
                kept.append(line)
            continue
        if (start is None or current >= start) and (end is None or current <= end):
            kept.append(line)
    return kept[-limit:] if limit else ([] if limit == 0 else kept)


# -- data-store paths ------------------------------------------------------------------------------


def one_path(ours: str | None, theirs: str | None, ours_name: str, theirs_name: str) -> str:
    """The data-store path a call names, by our keyword or the platform's (not both, unless
    equal)."""
    if ours is not None and theirs is not None and ours != theirs:
        raise SpecError(
            f"{ours_name} {ours!r} and {theirs_name} {theirs!r} name two objects; give one"
        )
    path = ours if ours is not None else theirs
    if path is None:
        raise SpecError(f"give the object's path: {ours_name}=... (or {theirs_name}=...)")
    return path


def folder_prefix(prefix: str, folder_path: str | None) -> str:
    """The key prefix of a listing: our `prefix` as given, or the platform's `folder_path`,
    a folder ("models" lists "models/...", not "models_old/...")."""
    if folder_path is None:
        return prefix
    if prefix:
        raise SpecError("give prefix or folder_path, not both")
    folder = folder_path.strip("/")
    return f"{folder}/" if folder else ""


def with_path(info: dict[str, Any]) -> dict[str, Any]:
    """An object's information with the platform's `path` beside our `key`."""
    return {"path": info["key"], **info}


# -- an execution's inputs and outputs, as the platform gives them ------------------------------

#: Our mapping field -> the platform's `source` of an input.
_INPUT_SOURCES = {
    "endpoint_input_name": "endpoint",
    "constant_value": "constant",
    "environment_variable_name": "environment_variable",
    "datastore_path": "datastore",
    "is_null": "is_null",
}

_OUTPUT_DESTINATIONS = {
    "endpoint_output_name": "endpoint",
    "datastore_path": "datastore",
    "is_null": "is_null",
}


def data_type_of(value: Any) -> str:
    """The platform's data type of a value: string, number, boolean, array, file or json."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, (bytes, bytearray)):
        return "file"
    return "json"


def input_record(
    name: str, value: Any, mapping: InputSource | None, execution_rule: str
) -> dict[str, Any]:
    """One input of an execution as the platform gives it: {pipeline_input_name, data_type,
    <the mapping's source field>, source, value}. An unmapped input of an endpoint deployment
    came from the endpoint input of its name; of any other, from the run's inputs ("run")."""
    if mapping is None:
        if execution_rule == ExecutionRule.endpoint.value:
            return {
                "pipeline_input_name": name,
                "data_type": data_type_of(value),
                "endpoint_input_name": name,
                "source": "endpoint",
                "value": value,
            }
        return {
            "pipeline_input_name": name,
            "data_type": data_type_of(value),
            "source": "run",
            "value": value,
        }
    field = mapping.source
    given = getattr(mapping, field)
    if field == "constant_value" and mapping.is_secret:
        given = "***"
    return {
        "pipeline_input_name": name,
        "data_type": mapping.data_type,
        field: given,
        "source": _INPUT_SOURCES[field],
        "value": value,
    }


def input_records(inputs: dict[str, Any], spec: DeploymentSpec | None) -> list[dict[str, Any]]:
    """Every recorded input of an execution as the platform gives it (`input_record`), with
    the mappings of its deployment's settings `spec` (None: a run without a deployment)."""
    mappings = {m.pipeline_input_name: m for m in spec.inputs_mapping} if spec else {}
    rule = spec.execution_rule if spec else "run"
    return [input_record(name, value, mappings.get(name), rule) for name, value in inputs.items()]


def output_mapping_for(
    name: str, mappings: Iterable[OutputDestination]
) -> OutputDestination | None:
    """The mapping of the output asked for by `name`: its pipeline output name, or the
    endpoint output name it was delivered under."""
    for mapping in mappings:
        if name in (mapping.pipeline_output_name, mapping.endpoint_output_name):
            return mapping
    return None


def output_record(
    name: str, value: Any, mapping: OutputDestination | None, stored_key: str | None = None
) -> dict[str, Any]:
    """One output of an execution as the platform gives it: {pipeline_output_name, data_type,
    <the mapping's destination field>, destination, value}. Unmapped outputs went back to
    the caller under their own name; one written to the data store gives its key."""
    if stored_key is not None:
        return {
            "pipeline_output_name": mapping.pipeline_output_name if mapping else name,
            "data_type": data_type_of(value),
            "datastore_path": stored_key,
            "destination": "datastore",
            "value": value,
        }
    if mapping is None:
        return {
            "pipeline_output_name": name,
            "data_type": data_type_of(value),
            "endpoint_output_name": name,
            "destination": "endpoint",
            "value": value,
        }
    field = mapping.destination
    return {
        "pipeline_output_name": mapping.pipeline_output_name,
        "data_type": data_type_of(value),
        field: getattr(mapping, field),
        "destination": _OUTPUT_DESTINATIONS[field],
        "value": value,
    }
