"""The worker's three models: what one run needs, what a user may set, how a run ended.

For: `PipeDeployJobConfiguration` (built from the pool's base job template and a deployment's
job variables), `PipeDeployVariables` (the Prefect UI form of a `pipedeploy` pool: the
deployment spec's fields, each with its description) and `PipeDeployWorkerResult`; and
`base_job_template()`, the pool's template, which the SDK uses to create a pool without the
worker. Not for: running anything (`worker`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorkerResult
from pydantic import Field

from prefect_pipedeploy.spec import DeploymentSpec


class PipeDeployJobConfiguration(BaseJobConfiguration, DeploymentSpec):
    """What one run needs: the deployment spec (from the job variables) plus Prefect's basics."""

    working_dir: Path | None = Field(
        default=None, description="Directory the run starts in; a fresh temporary one if empty."
    )


class PipeDeployVariables(BaseVariables, DeploymentSpec):
    """The settings a user may set per deployment: the form the Prefect UI shows for the pool."""

    working_dir: Path | None = Field(
        default=None,
        title="Working Directory",
        description="Directory the run starts in; a fresh temporary one if empty.",
    )


class PipeDeployWorkerResult(BaseWorkerResult):
    """How the infrastructure of one run ended (status_code 0: it reported its own state)."""


def base_job_template() -> dict[str, Any]:
    """The base job template of a `pipedeploy` work pool (as `BaseWorker` builds it)."""
    variables = PipeDeployVariables.model_json_schema()
    variables.pop("title", None)
    return {
        "job_configuration": PipeDeployJobConfiguration.json_template(),
        "variables": variables,
    }
