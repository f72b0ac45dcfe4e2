"""Settings of prefect-pipedeploy: one Prefect-native settings class, the worker type, and the
one way to name a setting's environment variable.

For: every tunable of the worker, the pods, the gateway and the SDK, read the way Prefect reads
its own settings, highest priority first:

1. values given in code (`PipeDeploySettings(poll_seconds=1)`, `temporary_settings(...)`);
2. environment variables, `PREFECT_INTEGRATIONS_PIPEDEPLOY_<NAME>`;
3. a `.env` file in the working directory, same names;
4. `prefect.toml` in the working directory, table `[integrations.pipedeploy]`;
5. `pyproject.toml` in the working directory, table `[tool.prefect.integrations.pipedeploy]`;
6. the active Prefect profile (`profiles.toml`), same names as the environment variables;
7. the defaults below.

    # prefect.toml                         # ~/.prefect/profiles.toml
    [integrations.pipedeploy]              [profiles.local]
    poll_seconds = 1                       PREFECT_INTEGRATIONS_PIPEDEPLOY_POLL_SECONDS = "1"

Read them where they are used with `get_settings()`: nothing is frozen at import time, so a
test or a process can change the environment (or enter `temporary_settings`) and see the
change. Name a setting's variable with `env_name("data_store")`, never by spelling it out; hand
settings to a child process with `settings.to_environment_variables()`.

Not for: per-deployment settings (those are the deployment spec's job variables, see `spec`),
or Prefect's own settings (`prefect.settings`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

from prefect.settings.base import PrefectBaseSettings, build_settings_config
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from prefect_pipedeploy.exceptions import InvalidSettings

WORKER_TYPE = "pipedeploy"
"""The type of the pipedeploy worker and of its work pools (`prefect worker start --type ...`)."""


SETTINGS_PATH = ("integrations", "pipedeploy")
"""Where the settings live in Prefect's tree: the TOML tables and the variables' prefix."""


class PipeDeploySettings(PrefectBaseSettings):
    """Settings for prefect-pipedeploy (`PREFECT_INTEGRATIONS_PIPEDEPLOY_<NAME>`, or
    `[integrations.pipedeploy]` in prefect.toml); see the module docstring for the sources."""

    model_config: ClassVar[SettingsConfigDict] = build_settings_config(SETTINGS_PATH)

    default_pool: str = Field(
        default="pipedeploy", description="Work pool the SDK uses when none is named."
    )
    home: Path = Field(
        default=Path(".pipedeploy"),
        description="Project-local directory for the local stack (server database, logs).",
    )
    poll_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Fallback poll interval of the worker; events wake it up at once.",
    )
    pending_recovery_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "A run left Pending this long (its worker died after claiming it) is re-queued "
            "by a live worker (workers look every half of this, and when they start)."
        ),
    )
    pod_start_timeout_s: float = Field(
        default=120.0, gt=0, description="How long a pod may take to import its pipeline."
    )
    ram_reserve: str = Field(
        default="1GiB",
        description="Memory kept free for the system when the worker's capacity is not given.",
    )
    ram_capacity: str | None = Field(
        default=None,
        description="RAM the worker may hand out, like '8GiB'; default: total memory minus ram_reserve.",
    )
    data_store: str | None = Field(
        default=None,
        description=(
            "Data store block used by mappings and the SDK, as '<block-type-slug>/<name>', "
            "e.g. 'pipedeploy-local-data-store/default' (set by `pipedeploy up`)."
        ),
    )
    code_max_mib: float = Field(
        default=100.0,
        gt=0,
        description=(
            "Largest compressed archive of a pipeline's folder that create_deployment ships "
            "to the data store (code/<sha256>.tar.gz); list what the pipeline does not need "
            "in the folder's .pipedeployignore."
        ),
    )
    gateway_url: str | None = Field(
        default=None, description="Base URL of the endpoint gateway, for the SDK's trigger verbs."
    )
    gateway_wait_s: float = Field(
        default=25.0,
        ge=0,
        description="How long an endpoint call waits for its execution before answering 303.",
    )
    gateway_access_token_ttl_s: int = Field(
        default=900,
        gt=0,
        description=(
            "How long an access token the gateway gives for an SDK token "
            "(POST /api/v1/auth/refresh, the reference platform's client) stays valid."
        ),
    )
    gateway_max_body_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest request body the gateway reads (413)."
    )
    gateway_max_waiting: int = Field(
        default=100,
        gt=0,
        description="Waiting executions per deployment before the gateway answers 429.",
    )
    gateway_max_queued: int = Field(
        default=10,
        gt=0,
        description=(
            "Calls the gateway holds waiting for their turn to create an execution (creating "
            "ones included); past it, 429 with Retry-After."
        ),
    )
    gateway_max_creating: int = Field(
        default=1,
        gt=0,
        description=(
            "Executions the gateway creates at the same time (the others wait their turn, "
            "first come first served). 1 suits a Prefect server on SQLite started with "
            "`prefect server start`, whose concurrent creates fail with 503; the server "
            "`pipedeploy up` starts makes them wait for each other instead, and `up` sets 4 "
            "(16 on PostgreSQL, and gateway_max_queued to 32)."
        ),
    )
    gateway_direct_dispatch: bool = Field(
        default=True,
        description=(
            "Hand an endpoint call straight to its low-latency pod when the pod is up and has a "
            "free slot (the pod records the execution in Prefect itself, with fewer writes); "
            "false: every call creates a run the worker hands on, as runs made any other way."
        ),
    )
    code_cache_retention_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description=(
            "How long a machine keeps a pipeline's fetched code (<PREFECT_HOME>/pipedeploy/code) "
            "after the last run that fetched it; a folder a live process works in is kept."
        ),
    )
    gateway_upload_retention_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description=(
            "How long files uploaded to endpoints are kept in the data store (uploads/...); "
            "older ones are removed unless an execution that may still read them refers to them."
        ),
    )
    gateway_bad_token_limit: int = Field(
        default=20,
        gt=0,
        description="Wrong tokens a client may send per minute before it is refused (429).",
    )
    gateway_max_fields: int = Field(
        default=1000,
        gt=0,
        description=(
            "Most fields in one request body: text fields of a form, or keys of a JSON object "
            "(400 past it)."
        ),
    )
    gateway_max_files: int = Field(
        default=100, gt=0, description="Most file parts in one multipart request body (400)."
    )
    gateway_max_part_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description=(
            "Largest text field of a form body, held in memory (413); file parts are spooled "
            "to temporary files and bounded by gateway_max_body_bytes only."
        ),
    )

    flush_logs_before_final: bool = Field(
        default=True,
        description=(
            "Store a run's log lines before its final state is set, so an execution reported "
            "final has all its logs (one API call per run on the way to its final state); "
            "off, they follow in Prefect's 2 s batches. Read once by each execution process."
        ),
    )
    retry_grace_s: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How long a failed execution with retries left stays failed before the gateway "
            "and the SDK stop waiting for its worker to queue the retry and report it final."
        ),
    )
    drain_grace_s: float = Field(
        default=30.0,
        ge=0,
        description=(
            "How long a pod being stopped or re-created, or a worker being stopped, lets its "
            "running executions finish; those still running then end Crashed, saying so."
        ),
    )
    pod_heartbeat_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "A pod whose heartbeats stop this long (stopped, or deadlocked) is killed and "
            "re-created; its executions end Crashed."
        ),
    )
    pod_write_gate: Literal["auto", "on", "off"] = Field(
        default="auto",
        description=(
            "Whether a pod keeps its creates apart from its runs' other writes (a create waits "
            "for the writes in flight, new writes for the create): auto, from the first create "
            "the server refuses as busy (SQLite) on; on, from the start; off, never. Read by "
            "each pod when it starts."
        ),
    )


def env_name(setting: str) -> str:
    """The environment variable of a setting: `env_name("data_store")` is
    "PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE". Raises `ValueError` for an unknown setting."""
    _check_names([setting])
    return f"{PipeDeploySettings.model_config.get('env_prefix', '')}{setting.upper()}"


# Values `temporary_settings` puts above every other source, for this context only.
_overrides: ContextVar[Mapping[str, Any]] = ContextVar(
    "pipedeploy_settings", default=MappingProxyType({})
)


def get_settings() -> PipeDeploySettings:
    """The settings as their sources say now. Read at the first call, and again whenever a source
    may have changed since: the `temporary_settings` in force, the working directory, a
    `PREFECT_*` environment variable, or the size or time of a settings file (`.env`,
    `prefect.toml`, `pyproject.toml`, the profiles file). Otherwise the same object comes back:
    do not modify it. (Reading every source took about 1.5 ms, and the gateway asks several
    times per call: half its CPU went there under load, issue 14.)

    Raises `InvalidSettings` naming each bad setting, its variable and the rule it breaks.
    """
    overrides = _overrides.get()
    key = _sources_key(overrides)
    if _settled(key):
        settings = _read.get(key)
        if settings is None:
            settings = _build(overrides)
            if len(_read) >= _READ_KEPT:
                _read.clear()
            _read[key] = settings
        return settings
    return _build(overrides)


# Settings read, by the state of their sources (`_sources_key`); a few kept, for the contexts
# of `temporary_settings` that alternate.
_read: dict[tuple[Any, ...], PipeDeploySettings] = {}
_READ_KEPT = 16


def _sources_key(overrides: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the settings read from, in a form that changes whenever they may (its last item: the
    settings files' times and sizes, see `_settled`)."""
    profiles = os.environ.get("PREFECT_PROFILES_PATH") or os.path.join(
        os.environ.get("PREFECT_HOME") or os.path.expanduser("~/.prefect"), "profiles.toml"
    )
    return (
        tuple(sorted((name, repr(value)) for name, value in overrides.items())),
        os.getcwd(),
        tuple(sorted(item for item in os.environ.items() if item[0].startswith("PREFECT_"))),
        tuple(_stamp(path) for path in (".env", "prefect.toml", "pyproject.toml", profiles)),
    )


def _settled(key: tuple[Any, ...]) -> bool:
    """Whether no settings file changed within `_SETTLE_NS`: a file rewritten twice at the same
    size within the clock's resolution looks unchanged, so a recent one is read every time."""
    now = time.time_ns()
    return all(stamp is None or now - stamp[0] > _SETTLE_NS for stamp in key[-1])


_SETTLE_NS = 2_000_000_000


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


@contextmanager
def temporary_settings(**values: Any) -> Iterator[PipeDeploySettings]:
    """Override settings by name for the block (`temporary_settings(poll_seconds=0.5)`).

    Like `prefect.settings.temporary_settings`: the values win over every other source for
    `get_settings()` in this context (the current thread or task, and the tasks it starts),
    nested blocks add to the outer ones, and leaving the block restores them. Child processes
    do not see them: hand them over with `get_settings().to_environment_variables()`. A value
    of None sets an optional setting to None whatever the environment says. Unknown names and
    invalid values raise at once, before the block runs. Yields the settings now in force.
    """
    _check_names(values)
    merged = {**_overrides.get(), **values}
    settings = _build(merged)
    token = _overrides.set(merged)
    try:
        yield settings
    finally:
        _overrides.reset(token)


def _build(values: Mapping[str, Any]) -> PipeDeploySettings:
    try:
        return PipeDeploySettings(**values)
    except ValidationError as exc:
        raise InvalidSettings(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    """'poll_seconds (PREFECT_INTEGRATIONS_PIPEDEPLOY_POLL_SECONDS) is '0': ...' per error."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        variable = f" ({env_name(name)})" if name in PipeDeploySettings.model_fields else ""
        problems.append(f"{name}{variable} is {error.get('input')!r}: {error['msg']}")
    table = ".".join(SETTINGS_PATH)
    return (
        f"invalid prefect-pipedeploy setting: {'; '.join(problems)}; fix it where it is set "
        f"(in code, the environment, .env, prefect.toml [{table}], pyproject.toml "
        f"[tool.prefect.{table}] or the active Prefect profile)"
    )


def _check_names(names: Any) -> None:
    unknown = [name for name in names if name not in PipeDeploySettings.model_fields]
    if unknown:
        raise ValueError(
            f"no prefect-pipedeploy setting {', '.join(map(repr, unknown))}; the settings are "
            f"{', '.join(PipeDeploySettings.model_fields)}"
        )
