"""Endpoints: what an endpoint deployment serves, read from the deployment (pure).

For: `Endpoint` and its `InputField`s (mapped endpoint inputs, then the pipeline inputs the
mapping leaves out), and the table of a pool's endpoints by path. Not for: reading deployments
(`service`), request bodies (`inputs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.exceptions import (
    PipeDeployError,
)
from prefect_pipedeploy.spec import DeploymentSpec, spec_from_job_variables


@dataclass(frozen=True)
class InputField:
    """One field an endpoint's body may carry, and the pipeline input it feeds."""

    name: str
    pipeline_input: str
    data_type: str | None
    """string, number, boolean, json, array or file; None for a pipeline input the mapping
    leaves out."""
    required: bool
    default: Any = None
    has_default: bool = False
    secret: bool = False
    schema: Mapping[str, Any] = field(default_factory=dict)
    """The pipeline's JSON schema of the input it feeds (from the deployment's parameter
    schema): a value is checked against it too, so one the execution would refuse is a 400."""


@dataclass(frozen=True)
class Endpoint:
    """An endpoint deployment as the gateway serves it."""

    path: str
    deployment_id: UUID
    deployment_name: str
    spec: DeploymentSpec
    fields: tuple[InputField, ...]
    set_by_deployment: Mapping[str, str]
    """Pipeline inputs a caller cannot give, and what sets them ("a constant", ...)."""
    paused: bool = False
    updated: str | None = None
    """When the deployment was last changed, as read (ISO 8601): a pod whose own copy differs
    leaves a direct call's run to Prefect's deployment route (`engine.direct.same_version`)."""

    def field(self, name: str) -> InputField | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def takes_files(self) -> bool:
        return any(f.data_type == "file" for f in self.fields)


_SET_BY = {
    "constant_value": "a constant",
    "environment_variable_name": "an environment variable",
    "datastore_path": "a data-store file",
    "is_null": "null",
}


def _schema_of(properties: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    schema = properties.get(name)
    return schema if isinstance(schema, Mapping) else {}


def input_fields(
    spec: DeploymentSpec, properties: Mapping[str, Any], required: Sequence[str]
) -> tuple[list[InputField], dict[str, str]]:
    """The fields of an endpoint's body: its mapped endpoint inputs, then the pipeline inputs
    the mapping leaves out (from the deployment's parameter schema `properties`). Also the
    pipeline inputs the deployment sets itself."""
    fields: list[InputField] = []
    set_by: dict[str, str] = {}
    mapped = {source.pipeline_input_name for source in spec.inputs_mapping}
    for source in spec.inputs_mapping:
        if source.endpoint_input_name is None:
            set_by[source.pipeline_input_name] = _SET_BY.get(source.source, "the deployment")
            continue
        fields.append(
            InputField(
                name=source.endpoint_input_name,
                pipeline_input=source.pipeline_input_name,
                data_type=source.data_type,
                required=source.is_required,
                default=source.default_value,
                has_default="default_value" in source.model_fields_set,
                secret=source.is_secret,
                schema=_schema_of(properties, source.pipeline_input_name),
            )
        )
    taken = {f.name for f in fields}
    for name in properties:
        if name in mapped or name in taken:
            continue
        fields.append(
            InputField(
                name=name,
                pipeline_input=name,
                data_type=None,
                required=name in required,
                schema=_schema_of(properties, name),
            )
        )
    return fields, {name: how for name, how in set_by.items() if name not in taken}


def endpoint_of(deployment: DeploymentResponse) -> Endpoint | None:
    """The endpoint a deployment serves; None when it is not an endpoint deployment.

    Raises `PipeDeployError` (a SpecError) when its settings are invalid.
    """
    spec = spec_from_job_variables(deployment.job_variables)
    path = spec.endpoint_path(deployment.name)
    if path is None:
        return None
    schema = deployment.parameter_openapi_schema or {}
    fields, set_by = input_fields(
        spec, schema.get("properties") or {}, list(schema.get("required") or [])
    )
    return Endpoint(
        path=path,
        deployment_id=deployment.id,
        deployment_name=deployment.name,
        spec=spec,
        fields=tuple(fields),
        set_by_deployment=set_by,
        paused=bool(deployment.paused),
        updated=deployment.updated.isoformat() if deployment.updated else None,
    )


def endpoint_table(
    deployments: Sequence[DeploymentResponse],
) -> tuple[dict[str, Endpoint], list[str]]:
    """Endpoints by path, and one sentence per deployment that cannot be served.

    Two deployments with one path: the older one keeps it.
    """
    table: dict[str, Endpoint] = {}
    problems: list[str] = []

    def age(d: DeploymentResponse) -> tuple[float, str]:
        return (d.created.timestamp() if d.created else math.inf, str(d.id))

    for deployment in sorted(deployments, key=age):
        try:
            endpoint = endpoint_of(deployment)
        except PipeDeployError as exc:
            problems.append(
                f"deployment {deployment.name!r} is not served: its settings are invalid: {exc}"
            )
            continue
        if endpoint is None:
            continue
        if endpoint.path in table:
            problems.append(
                f"deployment {deployment.name!r} is not served: endpoint path {endpoint.path!r} "
                f"belongs to deployment {table[endpoint.path].deployment_name!r}; give one of "
                "them another endpoint_url_path"
            )
            continue
        table[endpoint.path] = endpoint
    return table, problems
