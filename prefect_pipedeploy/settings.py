"""Settings of prefect-pipedeploy, read from `PREFECT_INTEGRATIONS_PIPEDEPLOY_*` variables.

For: every tunable of the worker, the pods, the gateway and the SDK, in one Prefect-style
settings class. Not for: per-deployment settings (those are the deployment spec's job
variables, see `spec`).

Read them where they are used with `get_settings()`: nothing is frozen at import time, so a
test or a process can change the environment and see the change.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PipeDeploySettings(BaseSettings):
    """Settings for prefect-pipedeploy (`PREFECT_INTEGRATIONS_PIPEDEPLOY_<NAME>`)."""

    model_config = SettingsConfigDict(env_prefix="PREFECT_INTEGRATIONS_PIPEDEPLOY_", extra="ignore")

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
            "by the next worker that starts."
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
    gateway_url: str | None = Field(
        default=None, description="Base URL of the endpoint gateway, for the SDK's trigger verbs."
    )
    gateway_wait_s: float = Field(
        default=25.0,
        ge=0,
        description="How long an endpoint call waits for its execution before answering 303.",
    )
    gateway_max_body_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="Largest request body the gateway reads (413)."
    )
    gateway_max_waiting: int = Field(
        default=100,
        gt=0,
        description="Waiting executions per deployment before the gateway answers 429.",
    )
    gateway_bad_token_limit: int = Field(
        default=20,
        gt=0,
        description="Wrong tokens a client may send per minute before it is refused (429).",
    )
    retry_grace_s: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How long a failed execution with retries left stays failed before the gateway "
            "and the SDK stop waiting for its worker to queue the retry and report it final."
        ),
    )


def get_settings() -> PipeDeploySettings:
    """The settings as the environment says now."""
    return PipeDeploySettings()
