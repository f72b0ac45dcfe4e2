"""What an execution leaves behind on its flow run: its resolved inputs and its outputs.

For: writing a run's inputs and outputs as table artifacts (shown on the run in the Prefect UI,
told apart by their metadata {"pipedeploy": "inputs" | "outputs"}) and reading them back for the
SDK and the gateway. A retried run records again; readers take the latest record.
Not for: resolving inputs or routing outputs (`iomapping`), or masking secrets (the io mapping
hands over inputs with secrets already replaced).

Tables: inputs have the columns `input` and `value`; outputs `output` and `value`, plus
`datastore_path` when some outputs went to the data store (their `value` is then empty). Every
`value` is the JSON text of the value, so any JSON value survives the round trip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
from prefect.client.schemas.sorting import ArtifactSort

INPUTS_ARTIFACT_KIND = "inputs"


OUTPUTS_ARTIFACT_KIND = "outputs"


_DESCRIPTIONS = {
    INPUTS_ARTIFACT_KIND: "Inputs of this pipeline execution, as resolved (prefect-pipedeploy).",
    OUTPUTS_ARTIFACT_KIND: "Outputs of this pipeline execution (prefect-pipedeploy).",
}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _encode(value: Any) -> str:
    return json.dumps(_jsonable(value))


def _table_artifact(flow_run_id: UUID, kind: str, rows: list[dict[str, str]]) -> ArtifactCreate:
    return ArtifactCreate(
        type="table",
        data=rows,
        description=_DESCRIPTIONS[kind],
        metadata_={"pipedeploy": kind},
        flow_run_id=flow_run_id,
    )


async def _read_table(
    client: PrefectClient, flow_run_id: UUID, kind: str
) -> list[dict[str, str]] | None:
    """The rows of the latest `kind` table recorded on the run, or None when there is none."""
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["table"])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        sort=ArtifactSort.CREATED_DESC,
    )
    for artifact in artifacts:
        if (artifact.metadata_ or {}).get("pipedeploy") == kind:
            data: Any = artifact.data or []
            # Prefect's own table artifacts keep their rows as JSON text; accept both forms.
            return json.loads(data) if isinstance(data, str) else data
    return None


def _inputs_rows(inputs: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"input": name, "value": _encode(value)} for name, value in inputs.items()]


async def record_inputs(client: Any, flow_run_id: UUID, inputs: Mapping[str, Any]) -> None:
    """Attach the resolved inputs (secrets already masked) to the run as a table artifact."""
    await client.create_artifact(
        _table_artifact(flow_run_id, INPUTS_ARTIFACT_KIND, _inputs_rows(inputs))
    )


def record_inputs_sync(client: Any, flow_run_id: UUID, inputs: Mapping[str, Any]) -> None:
    """`record_inputs` with Prefect's sync client."""
    client.create_artifact(_table_artifact(flow_run_id, INPUTS_ARTIFACT_KIND, _inputs_rows(inputs)))


async def read_inputs(client: PrefectClient, flow_run_id: UUID) -> dict[str, Any] | None:
    """The inputs recorded on a run, or None when it recorded none."""
    rows = await _read_table(client, flow_run_id, INPUTS_ARTIFACT_KIND)
    if rows is None:
        return None
    return {row["input"]: json.loads(row["value"]) for row in rows}


def _outputs_rows(
    outputs: Mapping[str, Any], stored: Mapping[str, str] | None
) -> list[dict[str, str]]:
    rows = [{"output": name, "value": _encode(value)} for name, value in outputs.items()]
    if stored:
        for row in rows:
            row["datastore_path"] = ""
        rows += [
            {"output": name, "value": "", "datastore_path": key} for name, key in stored.items()
        ]
    return rows


async def record_outputs(
    client: Any,
    flow_run_id: UUID,
    outputs: Mapping[str, Any],
    stored: Mapping[str, str] | None = None,
) -> None:
    """Attach the outputs to the run as a table artifact (shown in the Prefect UI).

    `outputs` are the values given back to the caller (by endpoint output name); `stored` maps
    the outputs written to the data store (by pipeline output name) to their keys.
    """
    await client.create_artifact(
        _table_artifact(flow_run_id, OUTPUTS_ARTIFACT_KIND, _outputs_rows(outputs, stored))
    )


def record_outputs_sync(
    client: Any,
    flow_run_id: UUID,
    outputs: Mapping[str, Any],
    stored: Mapping[str, str] | None = None,
) -> None:
    """`record_outputs` with Prefect's sync client (inside a `def` pipeline's run)."""
    client.create_artifact(
        _table_artifact(flow_run_id, OUTPUTS_ARTIFACT_KIND, _outputs_rows(outputs, stored))
    )


def _returned(rows: list[dict[str, str]]) -> dict[str, Any]:
    return {
        row["output"]: json.loads(row["value"]) for row in rows if not row.get("datastore_path")
    }


def _stored(rows: list[dict[str, str]]) -> dict[str, str]:
    return {row["output"]: row["datastore_path"] for row in rows if row.get("datastore_path")}


def outputs_as_read(
    outputs: Mapping[str, Any], stored: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """What `read_outputs` and `read_stored_outputs` give back for a run that recorded these
    (`record_outputs`): a pod answers a direct call with them, no artifact read needed."""
    rows = _outputs_rows(outputs, stored)
    return _returned(rows), _stored(rows)


async def read_outputs(client: PrefectClient, flow_run_id: UUID) -> dict[str, Any] | None:
    """The outputs given back to the caller, as recorded on a run; None when it recorded none."""
    rows = await _read_table(client, flow_run_id, OUTPUTS_ARTIFACT_KIND)
    return None if rows is None else _returned(rows)


async def read_stored_outputs(client: PrefectClient, flow_run_id: UUID) -> dict[str, str] | None:
    """The outputs a run wrote to the data store: output name -> key; None when it recorded none."""
    rows = await _read_table(client, flow_run_id, OUTPUTS_ARTIFACT_KIND)
    return None if rows is None else _stored(rows)
