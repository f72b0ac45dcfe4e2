"""The deployment spec: what a pipedeploy deployment is, as pydantic models.

For: the single source of truth of a deployment's platform settings (execution rule, mode,
execution management, RAM request, timeout, schedule, endpoint path, inputs/outputs mapping),
their validation with messages that name the field and the fix, and their conversion to
Prefect objects (schedules, job variables). The work pool's base job template is generated from
these models (see `worker.models`), so the Prefect UI form shows the same fields; their JSON schema is
kept compact (`compact_form_schema`) because the server checks it on every flow-run create.
Not for: talking to the API (`sdk`), or resolving mappings at run time (`iomapping`).
"""

from __future__ import annotations

import datetime
import re
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.form_schema import FormModel
from prefect_pipedeploy.sizes import parse_ram

# ---------------------------------------------------------------------------------------------
# Enumerations
# ---------------------------------------------------------------------------------------------


class ExecutionRule(str, Enum):
    """How executions are requested: an HTTP endpoint or a schedule."""

    endpoint = "endpoint"
    periodic = "periodic"


class Mode(str, Enum):
    """Where executions run: a warm pod per deployment, or a fresh process per execution."""

    elastic = "elastic"
    low_latency = "low_latency"


class Runtime(str, Enum):
    """What an execution's process (or a pod) runs in: a child process of the worker, or a
    Docker container of the deployment's image."""

    process = "process"
    docker = "docker"


InputType = Literal["string", "number", "boolean", "json", "array", "file"]

# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

_UNIT_SECONDS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
_EVERY_RE = re.compile(r"^\s*every\s+(\d+)\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


class BasicSchedule(FormModel):
    """Every N seconds, minutes, hours or days (the platform's "basic" schedule)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["basic"] = Field(default="basic", description="Always 'basic'.")
    every: int = Field(gt=0, description="How many units between two executions.")
    unit: Literal["seconds", "minutes", "hours", "days"] = Field(
        default="minutes", description="The unit of `every`."
    )

    @property
    def interval(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.every * _UNIT_SECONDS[self.unit])


class AdvancedSchedule(FormModel):
    """A cron expression in UTC (the platform's "advanced" schedule)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["advanced"] = Field(default="advanced", description="Always 'advanced'.")
    cron: str = Field(description="A 5-field cron expression, evaluated in UTC.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value, timezone="UTC")
        except ValidationError:
            raise ValueError(
                f"{value!r} is not a cron expression; use 5 fields like '*/5 * * * *'"
            ) from None
        return value


Schedule = Annotated[BasicSchedule | AdvancedSchedule, Field(discriminator="type")]


def coerce_schedule(value: Any) -> Any:
    """Accept the friendly forms of a schedule and return the model's dict form.

    "every 30 seconds" and a `timedelta` become a basic schedule; any other string is a cron
    expression; dicts and models pass through.
    """
    if isinstance(value, datetime.timedelta):
        seconds = int(value.total_seconds())
        return {"type": "basic", "every": seconds, "unit": "seconds"}
    if isinstance(value, str):
        match = _EVERY_RE.match(value)
        if match:
            return {"type": "basic", "every": int(match.group(1)), "unit": match.group(2) + "s"}
        return {"type": "advanced", "cron": value.strip()}
    if isinstance(value, dict) and "type" not in value:
        return {"type": "advanced" if "cron" in value else "basic", **value}
    return value


# ---------------------------------------------------------------------------------------------
# Inputs and outputs mapping
# ---------------------------------------------------------------------------------------------

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
OUTPUT_PLACEHOLDERS = ("execution_id", "date", "date_time")


#: Placeholders filled with sample values to check an output's datastore_path as a key.
_SAMPLE_PLACEHOLDERS = {
    "execution_id": "00000000-0000-0000-0000-000000000000",
    "date": "20240101",
    "date_time": "20240101_000000",
}


def _store_key_problem(path: str) -> str | None:
    """Why the data store would refuse `path` as a key (its placeholders filled with sample
    values), or None. The data store's own rule (`datastore.keys`, pure: it imports nothing
    above this module), imported here so that the spec refuses what every execution would."""
    from prefect_pipedeploy.datastore.keys import validate_key
    from prefect_pipedeploy.exceptions import InvalidDataStoreKey

    sample = _PLACEHOLDER_RE.sub(lambda m: _SAMPLE_PLACEHOLDERS.get(m.group(1), "x"), path)
    try:
        validate_key(sample)
    except InvalidDataStoreKey as exc:
        return str(exc).removeprefix(f"data store key {sample!r} ")
    return None


class InputSource(FormModel):
    """Where one input of the pipeline comes from: exactly one source per input."""

    model_config = ConfigDict(extra="forbid")

    pipeline_input_name: str = Field(description="The pipeline's parameter this feeds.")
    endpoint_input_name: str | None = Field(
        default=None, description="Take the value from this field of the endpoint's JSON body."
    )
    data_type: InputType = Field(
        default="json",
        description="Type the endpoint checks: string, number, boolean, json, array or file.",
    )
    is_required: bool = Field(
        default=True, description="Whether the endpoint call must give this input."
    )
    default_value: Any = Field(
        default=None, description="Value used when an optional endpoint input is not given."
    )
    constant_value: Any = Field(default=None, description="Always pass this constant.")
    environment_variable_name: str | None = Field(
        default=None, description="Read the value from this environment variable at run time."
    )
    datastore_path: str | None = Field(
        default=None,
        description="Download this data-store object; the pipeline receives {'path': ...}.",
    )
    is_null: bool = Field(default=False, description="Always pass None.")
    is_secret: bool = Field(
        default=False, description="Keep this input's value out of events and recorded inputs."
    )

    @property
    def source(self) -> str:
        """The name of the one source this input uses."""
        return self._sources()[0]

    def _sources(self) -> list[str]:
        sources = []
        if self.endpoint_input_name is not None:
            sources.append("endpoint_input_name")
        if "constant_value" in self.model_fields_set:
            sources.append("constant_value")
        if self.environment_variable_name is not None:
            sources.append("environment_variable_name")
        if self.datastore_path is not None:
            sources.append("datastore_path")
        if self.is_null:
            sources.append("is_null")
        return sources

    @model_validator(mode="after")
    def _one_source(self) -> InputSource:
        name = self.pipeline_input_name
        if not _IDENTIFIER_RE.match(name):
            raise ValueError(
                f"pipeline_input_name {name!r} is not a Python parameter name; "
                "use letters, digits and underscores"
            )
        sources = self._sources()
        if len(sources) != 1:
            found = ", ".join(sources) if sources else "none"
            raise ValueError(
                f"input {name!r} needs exactly one source (endpoint_input_name, "
                f"constant_value, environment_variable_name, datastore_path or is_null); "
                f"found {found}"
            )
        if "default_value" in self.model_fields_set:
            if sources[0] != "endpoint_input_name":
                raise ValueError(
                    f"input {name!r}: default_value only applies to endpoint inputs; remove it"
                )
            if "is_required" in self.model_fields_set and self.is_required:
                raise ValueError(
                    f"input {name!r}: an input with a default_value is optional; "
                    "set is_required=False or remove default_value"
                )
            self.is_required = False
        if self.data_type == "file" and sources[0] != "endpoint_input_name":
            raise ValueError(
                f"input {name!r}: data_type 'file' is for endpoint inputs; "
                "use datastore_path to pass a stored file"
            )
        if self.datastore_path is not None:
            problem = _store_key_problem(self.datastore_path)
            if problem:
                raise ValueError(
                    f"input {name!r}: datastore_path {self.datastore_path!r} is no data-store "
                    f"key: it {problem}"
                )
        return self


class OutputDestination(FormModel):
    """Where one output of the pipeline goes: exactly one destination per output."""

    model_config = ConfigDict(extra="forbid")

    pipeline_output_name: str = Field(description="The key of the pipeline's returned dict.")
    endpoint_output_name: str | None = Field(
        default=None, description="Return the value to the caller under this name."
    )
    datastore_path: str | None = Field(
        default=None,
        description=(
            "Store the value at this data-store path; {execution_id}, {date} and "
            "{date_time} are filled in."
        ),
    )
    is_null: bool = Field(default=False, description="Drop this output.")

    @property
    def destination(self) -> str:
        if self.endpoint_output_name is not None:
            return "endpoint_output_name"
        return "datastore_path" if self.datastore_path is not None else "is_null"

    @model_validator(mode="after")
    def _one_destination(self) -> OutputDestination:
        name = self.pipeline_output_name
        chosen = [
            field
            for field, used in (
                ("endpoint_output_name", self.endpoint_output_name is not None),
                ("datastore_path", self.datastore_path is not None),
                ("is_null", self.is_null),
            )
            if used
        ]
        if len(chosen) != 1:
            raise ValueError(
                f"output {name!r} needs exactly one destination (endpoint_output_name, "
                f"datastore_path or is_null); found {', '.join(chosen) or 'none'}"
            )
        if self.datastore_path is not None:
            for placeholder in _PLACEHOLDER_RE.findall(self.datastore_path):
                if placeholder not in OUTPUT_PLACEHOLDERS:
                    raise ValueError(
                        f"output {name!r}: datastore_path placeholder {{{placeholder}}} is "
                        f"unknown; use {{execution_id}}, {{date}} or {{date_time}}"
                    )
            problem = _store_key_problem(self.datastore_path)
            if problem:
                raise ValueError(
                    f"output {name!r}: datastore_path {self.datastore_path!r} gives no data-store "
                    f"key (placeholders filled in): it {problem}"
                )
        return self


# ---------------------------------------------------------------------------------------------
# The docker runtime's settings
# ---------------------------------------------------------------------------------------------

_VOLUME_RE = re.compile(r"^[^:]+:/[^:]*(:(ro|rw))?$")


class DockerSettings(FormModel):
    """Where a `runtime: docker` deployment runs: the image, and how its containers start."""

    image: str = Field(
        min_length=1,
        description="The image (with Python and prefect-pipedeploy), like 'my-model:1.2'.",
    )
    volumes: list[str] = Field(
        default_factory=list,
        description="Mounts as 'host-path:container-path' (':ro' for read-only).",
    )
    network_mode: str = Field(
        default="host",
        description="The containers' network; 'host' reaches a Prefect API on 127.0.0.1.",
    )
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        default="IfNotPresent",
        description="Pull the image: when it is not on the machine, always, or never.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment variables set in the containers."
    )

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[str]) -> list[str]:
        for volume in value:
            if not _VOLUME_RE.match(volume):
                raise ValueError(
                    f"{volume!r} is not a mount; write it as 'host-path:/container/path' or "
                    "'host-path:/container/path:ro'"
                )
        return value


# ---------------------------------------------------------------------------------------------
# The deployment spec
# ---------------------------------------------------------------------------------------------

_URL_PATH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9][A-Za-z0-9._~-]*)*$")


class DeploymentSpec(FormModel):
    """The platform settings of one deployment, kept in the Prefect deployment's job variables."""

    model_config = ConfigDict(use_enum_values=True)

    execution_rule: ExecutionRule = Field(
        default=ExecutionRule.endpoint,
        description="endpoint: triggered by an HTTP call; periodic: run on a schedule.",
    )
    mode: Mode = Field(
        default=Mode.elastic,
        description=(
            "elastic: a fresh process per execution, nothing resident while idle; "
            "low_latency: a warm pod per deployment that starts executions in milliseconds."
        ),
    )
    enable_parallel_executions: bool = Field(
        default=False,
        description="low_latency only: run several executions at once in the pod.",
    )
    max_parallel_executions_per_pod: int = Field(
        default=6, ge=1, le=1000, description="How many executions a pod runs at once."
    )
    max_retries: int = Field(
        default=1,
        ge=0,
        le=100,
        description="How often a failed execution is retried (queue mode: right after the next).",
    )
    ram_request: str = Field(
        default="512MiB",
        description="RAM reserved for the pod or the execution, like '512MiB' or '1GiB'.",
    )
    execution_timeout_s: float | None = Field(
        default=None, gt=0, description="Fail an execution that runs longer than this."
    )
    schedule: Schedule | None = Field(
        default=None,
        description="periodic only: every N seconds/minutes/hours/days, or a cron in UTC.",
    )
    endpoint_url_path: str | None = Field(
        default=None,
        description="endpoint only: the path under /endpoints/; defaults to the deployment name.",
    )
    inputs_mapping: list[InputSource] = Field(
        default_factory=list, description="Where each pipeline input comes from."
    )
    outputs_mapping: list[OutputDestination] = Field(
        default_factory=list, description="Where each pipeline output goes."
    )
    runtime: Runtime = Field(
        default=Runtime.process,
        description=(
            "process: executions and pods run as processes of the worker's machine; docker: "
            "in containers of the `docker` image (one per elastic execution, one per pod)."
        ),
    )
    docker: DockerSettings | None = Field(
        default=None, description="runtime docker only: the image and how containers start."
    )
    endpoint_token_hash: str | None = Field(
        default=None,
        description="Hash of the endpoint token (set by pipedeploy; the token is never stored).",
    )

    @field_validator("ram_request", mode="before")
    @classmethod
    def _ram_has_unit(cls, value: Any) -> Any:
        parse_ram(value)  # raises SpecError (a ValueError) naming the field and the units
        return value.strip()

    @field_validator("schedule", mode="before")
    @classmethod
    def _friendly_schedule(cls, value: Any) -> Any:
        return None if value is None else coerce_schedule(value)

    @field_validator("endpoint_url_path")
    @classmethod
    def _url_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip("/")
        if not _URL_PATH_RE.match(value):
            raise ValueError(
                f"{value!r} is not a URL path; use letters, digits, '-', '_', '.', '~' "
                "and '/' between segments"
            )
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> DeploymentSpec:
        periodic = self.execution_rule == ExecutionRule.periodic.value
        if periodic and self.schedule is None:
            raise ValueError(
                "schedule: a periodic deployment needs a schedule, like 'every 10 minutes' "
                "or a cron '0 * * * *'"
            )
        if not periodic and self.schedule is not None:
            raise ValueError(
                "schedule is only for periodic deployments; set execution_rule='periodic' "
                "or remove the schedule"
            )
        if periodic and self.endpoint_url_path is not None:
            raise ValueError(
                "endpoint_url_path is only for endpoint deployments; remove it or set "
                "execution_rule='endpoint'"
            )
        docker = self.runtime == Runtime.docker.value
        if docker and self.docker is None:
            raise ValueError(
                "docker: runtime docker needs docker settings with an image, like "
                "docker={'image': 'my-model:1.2'}"
            )
        if not docker and self.docker is not None:
            raise ValueError(
                "docker settings are only for runtime docker; set runtime='docker' or remove them"
            )
        if self.enable_parallel_executions and self.mode != Mode.low_latency.value:
            raise ValueError(
                "enable_parallel_executions: parallel executions need mode low_latency; "
                "set mode='low_latency' or disable parallel executions"
            )
        seen: set[str] = set()
        for source in self.inputs_mapping:
            if source.pipeline_input_name in seen:
                raise ValueError(
                    f"inputs_mapping: input {source.pipeline_input_name!r} is mapped twice; "
                    "keep one source per input"
                )
            seen.add(source.pipeline_input_name)
            if periodic and source.endpoint_input_name is not None:
                raise ValueError(
                    f"inputs_mapping: a periodic deployment cannot map input "
                    f"{source.pipeline_input_name!r} to an endpoint input; use a constant, "
                    "an environment variable, a data-store path or null"
                )
        outputs: set[str] = set()
        for destination in self.outputs_mapping:
            if destination.pipeline_output_name in outputs:
                raise ValueError(
                    f"outputs_mapping: output {destination.pipeline_output_name!r} is mapped "
                    "twice; keep one destination per output"
                )
            outputs.add(destination.pipeline_output_name)
            if periodic and destination.endpoint_output_name is not None:
                raise ValueError(
                    f"outputs_mapping: a periodic deployment has no caller to return output "
                    f"{destination.pipeline_output_name!r} to; use a datastore_path or is_null"
                )
        return self

    # ---- derived values -------------------------------------------------------------------

    @property
    def ram_request_mib(self) -> int:
        return parse_ram(self.ram_request)

    @property
    def parallelism(self) -> int:
        """How many executions of this deployment may run at once in its pod."""
        return self.max_parallel_executions_per_pod if self.enable_parallel_executions else 1

    def endpoint_path(self, deployment_name: str) -> str | None:
        """The path under /endpoints/ this deployment answers at: `endpoint_url_path`, else the
        deployment's name, without surrounding '/'; None for a periodic deployment.

        The one rule for the gateway's table, the SDK's views and the trigger automations.
        """
        if self.execution_rule != ExecutionRule.endpoint.value:
            return None
        return (self.endpoint_url_path or deployment_name).strip("/")

    def check_pipeline_inputs(self, parameter_names: list[str], required: list[str]) -> None:
        """Refuse a mapping that names unknown inputs, or a periodic one that leaves some out."""
        mapped = {source.pipeline_input_name for source in self.inputs_mapping}
        unknown = sorted(mapped - set(parameter_names))
        if unknown:
            raise SpecError(
                f"inputs_mapping: the pipeline has no input {', '.join(map(repr, unknown))}; "
                f"its inputs are {', '.join(parameter_names) or 'none'}"
            )
        if self.execution_rule == ExecutionRule.periodic.value:
            missing = [name for name in required if name not in mapped]
            if missing:
                raise SpecError(
                    "inputs_mapping: a periodic deployment must map every input; "
                    f"map {', '.join(map(repr, missing))} to a constant, an environment "
                    "variable, a data-store path or null"
                )

    def prefect_schedules(self) -> list[Any]:
        """The Prefect schedules of this deployment (UTC), empty for endpoint deployments."""
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

        if self.schedule is None:
            return []
        if isinstance(self.schedule, BasicSchedule):
            prefect_schedule: Any = IntervalSchedule(
                interval=self.schedule.interval,
                anchor_date=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc),
            )
        else:
            prefect_schedule = CronSchedule(cron=self.schedule.cron, timezone="UTC")
        return [DeploymentScheduleCreate(schedule=prefect_schedule, active=True)]

    def job_variables(self) -> dict[str, Any]:
        """The job variables that store this spec on a Prefect deployment.

        Mappings keep exactly the fields that were set, so a constant of None stays a constant.
        """
        data = self.model_dump(
            mode="json", exclude_none=True, exclude={"inputs_mapping", "outputs_mapping"}
        )
        data["inputs_mapping"] = [
            m.model_dump(mode="json", exclude_unset=True) for m in self.inputs_mapping
        ]
        data["outputs_mapping"] = [
            m.model_dump(mode="json", exclude_unset=True) for m in self.outputs_mapping
        ]
        return data


def spec_from_job_variables(job_variables: dict[str, Any] | None) -> DeploymentSpec:
    """Read a deployment's spec back from its job variables (unknown keys are ignored)."""
    fields = DeploymentSpec.model_fields
    values = {k: v for k, v in (job_variables or {}).items() if k in fields}
    return build_spec(**values)


def build_spec(**values: Any) -> DeploymentSpec:
    """Validate a spec; errors come back as one `SpecError` naming every bad field."""
    try:
        return DeploymentSpec(**values)
    except ValidationError as exc:
        raise SpecError(explain_validation_error(exc)) from None


def explain_validation_error(exc: ValidationError) -> str:
    """One line per problem: the field's path, then what to change."""
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = str(error.get("ctx", {}).get("error") or error["msg"])
        message = message.removeprefix("Value error, ")
        if location and not message.startswith(location.split(".")[0]):
            lines.append(f"{location}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)
