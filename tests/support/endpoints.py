"""An endpoint like the gateway builds from a deployment, without a server (pure data).

For: the gateway's input checks, OpenAPI operation and the in-process app tests, which all need
an endpoint with every kind of input: string, number (renamed), boolean, array, json, a secret,
a file, a constant, and pipeline inputs the mapping does not name.
Not for: endpoints of real deployments (the e2e tests deploy them).
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect_pipedeploy.gateway.endpoints import Endpoint, input_fields
from prefect_pipedeploy.spec import build_spec

MAPPING: list[dict[str, Any]] = [
    {"pipeline_input_name": "text", "endpoint_input_name": "text", "data_type": "string"},
    {
        "pipeline_input_name": "repeat",
        "endpoint_input_name": "times",
        "data_type": "number",
        "default_value": 1,
    },
    {
        "pipeline_input_name": "flag",
        "endpoint_input_name": "flag",
        "data_type": "boolean",
        "is_required": False,
    },
    {
        "pipeline_input_name": "tags",
        "endpoint_input_name": "tags",
        "data_type": "array",
        "is_required": False,
    },
    {
        "pipeline_input_name": "extra",
        "endpoint_input_name": "extra",
        "data_type": "json",
        "is_required": False,
    },
    {
        "pipeline_input_name": "key",
        "endpoint_input_name": "key",
        "data_type": "string",
        "is_secret": True,
        "default_value": "",
    },
    {
        "pipeline_input_name": "doc",
        "endpoint_input_name": "doc",
        "data_type": "file",
        "is_required": False,
    },
    {"pipeline_input_name": "scale", "constant_value": 2.5},
]
PROPERTIES = {
    name: {"title": name}
    for name in ("text", "repeat", "flag", "tags", "extra", "key", "doc", "scale")
} | {
    "level": {"title": "level", "type": "integer", "default": 3},
    "note": {"title": "note", "type": "string"},
    "anything": {"title": "anything"},
}


def make_endpoint(
    mapping: list[dict[str, Any]] = MAPPING, required: tuple[str, ...] = ()
) -> Endpoint:
    spec = build_spec(inputs_mapping=mapping)
    fields, set_by = input_fields(spec, PROPERTIES, list(required))
    return Endpoint(
        path="team/score",
        deployment_id=uuid.uuid4(),
        deployment_name="score",
        spec=spec,
        fields=tuple(fields),
        set_by_deployment=set_by,
    )


ENDPOINT = make_endpoint(required=("note",))
