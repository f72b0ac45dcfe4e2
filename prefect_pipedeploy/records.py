"""What an execution leaves behind on its flow run: its outputs (and, later, its inputs).

For: writing a run's outputs as a table artifact (shown in the Prefect UI) and reading them
back for the SDK. Not for: routing outputs to their destinations (io mapping).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterType,
    FlowRunFilter,
    FlowRunFilterId,
)

OUTPUTS_ARTIFACT_KIND = "outputs"


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _outputs_artifact(flow_run_id: UUID, outputs: dict[str, Any]) -> ArtifactCreate:
    rows = [
        {"output": name, "value": json.dumps(_jsonable(value))} for name, value in outputs.items()
    ]
    return ArtifactCreate(
        type="table",
        data=rows,
        description="Outputs of this pipeline execution (prefect-pipedeploy).",
        metadata_={"pipedeploy": OUTPUTS_ARTIFACT_KIND},
        flow_run_id=flow_run_id,
    )


async def record_outputs(client: Any, flow_run_id: UUID, outputs: dict[str, Any]) -> None:
    """Attach the outputs to the run as a table artifact (shown in the Prefect UI)."""
    await client.create_artifact(_outputs_artifact(flow_run_id, outputs))


def record_outputs_sync(client: Any, flow_run_id: UUID, outputs: dict[str, Any]) -> None:
    """`record_outputs` with Prefect's sync client (inside a `def` pipeline's run)."""
    client.create_artifact(_outputs_artifact(flow_run_id, outputs))


async def read_outputs(client: PrefectClient, flow_run_id: UUID) -> dict[str, Any] | None:
    """The outputs recorded on a run, or None when it recorded none."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["table"])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
    )
    for artifact in artifacts:
        if (artifact.metadata_ or {}).get("pipedeploy") == OUTPUTS_ARTIFACT_KIND:
            rows: list[dict[str, str]] = artifact.data or []  # type: ignore[assignment]
            return {row["output"]: json.loads(row["value"]) for row in rows}
    return None
