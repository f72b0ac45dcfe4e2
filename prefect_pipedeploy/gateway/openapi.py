"""The gateway's OpenAPI document: the generic routes plus one operation per endpoint.

For: `openapi_document` (served at /openapi.json, shown at /docs) with each endpoint's body
schema. Not for: validating bodies (`inputs`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from prefect_pipedeploy.gateway.bodies import format_bytes, inputs_limit
from prefect_pipedeploy.gateway.endpoints import Endpoint, InputField
from prefect_pipedeploy.settings import get_settings

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}


_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR_SCHEMA,
    "InvalidInputs": {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "required": ["message"],  # `errors` when the inputs are the problem, not the body
    },
    "ExecutionResult": {
        "type": "object",
        "properties": {
            "execution_id": {"type": "string", "format": "uuid"},
            "outputs": {"type": "object", "description": "The outputs, by endpoint output name."},
        },
        "required": ["execution_id", "outputs"],
    },
    "ExecutionAccepted": {
        "type": "object",
        "properties": {"execution_id": {"type": "string", "format": "uuid"}},
        "required": ["execution_id"],
    },
    "ExecutionFailed": {
        "type": "object",
        "properties": {
            "message": {"type": "string"},
            "execution_id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["Failed", "Error"]},
        },
        "required": ["message", "execution_id", "status"],
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The execution succeeded within the wait budget: its outputs (a single "
        "file output: its bytes).",
        "content": {
            "application/json": {"schema": _ref("ExecutionResult")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    303: {
        "description": "Still running after the wait budget: GET the Location (same token) to "
        "keep waiting; `curl -L` follows it.",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    401: _error("Missing or wrong endpoint token."),
    404: _error("No such endpoint, or no such execution of it."),
    429: _error("Too many wrong tokens from this client (see Retry-After)."),
    500: _error("The execution failed.", "ExecutionFailed"),
}


CALL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RESULT_RESPONSES,
    202: {
        "description": "With ?wait_for_completion=false: the execution was created.",
        "content": {"application/json": {"schema": _ref("ExecutionAccepted")}},
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    400: _error(
        "Invalid inputs, each invalid field named in `errors` (values no execution can take "
        "included: nested deeper than 100 levels, a lone surrogate in a string, a number beyond "
        "a 64-bit float); or a malformed body, or more fields or file parts than the gateway's "
        "limits.",
        "InvalidInputs",
    ),
    409: _error("The endpoint's deployment is disabled."),
    413: _error(
        "The body is over the gateway's limit (GATEWAY_MAX_BODY_BYTES, files included), one "
        "text field of a form is over GATEWAY_MAX_PART_BYTES, or the inputs other than files "
        "take more than the Prefect server stores for one execution once encoded as JSON "
        "(PREFECT_SERVER_API_MAX_PARAMETER_SIZE, 512 KiB by default); the message says which."
    ),
    415: _error("The body is neither JSON nor a form."),
    429: _error(
        "The gateway's queue of calls waiting to create an execution is full "
        "(GATEWAY_MAX_QUEUED), too many executions of this deployment wait "
        "(GATEWAY_MAX_WAITING), or too many wrong tokens came from this client; try again "
        "after Retry-After seconds."
    ),
}


_PROPERTY_SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "array": {"type": "array", "items": {}},
    "json": {},
    "file": {"type": "string", "format": "binary"},
}


def _property_schema(field_: InputField) -> dict[str, Any]:
    if field_.data_type is not None:
        schema = dict(_PROPERTY_SCHEMAS[field_.data_type])
        if field_.has_default and not field_.secret:
            schema["default"] = field_.default
    else:
        raw = dict(field_.schema)
        # references point into the deployment's own schema document: keep only plain schemas
        schema = {} if "$ref" in json.dumps(raw, default=str) else raw
        schema.pop("position", None)
    if field_.secret:
        schema["description"] = "Secret: masked in events and in the execution's records."
    if field_.pipeline_input != field_.name:
        schema.setdefault("description", f"Feeds the pipeline input {field_.pipeline_input!r}.")
    return schema


def endpoint_operation(endpoint: Endpoint) -> dict[str, Any]:
    """The OpenAPI operation of one endpoint, with the schema of its body."""
    body = {
        "type": "object",
        "properties": {f.name: _property_schema(f) for f in endpoint.fields},
        "required": [f.name for f in endpoint.fields if f.required],
        "additionalProperties": False,
    }
    media = "multipart/form-data" if endpoint.takes_files else "application/json"
    limits = get_settings()
    return {
        "summary": f"Call {endpoint.path}",
        "description": (
            f"Runs deployment {endpoint.deployment_name!r}. The body may take at most "
            f"{format_bytes(limits.gateway_max_body_bytes)}, files included; {inputs_limit()}."
        ),
        "operationId": f"call_{re.sub(r'[^A-Za-z0-9_]', '_', endpoint.path)}",
        "tags": ["endpoints"],
        "security": [{"EndpointToken": []}],
        "parameters": [
            {
                "name": "wait_for_completion",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": True},
            }
        ],
        "requestBody": {"required": False, "content": {media: {"schema": body}}},
        "responses": {str(code): value for code, value in CALL_RESPONSES.items()},
    }


def openapi_document(app: FastAPI, endpoints: Mapping[str, Endpoint]) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    paths = document.setdefault("paths", {})
    for path, endpoint in sorted(endpoints.items()):
        paths[f"/endpoints/{path}"] = {"post": endpoint_operation(endpoint)}
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_SCHEMAS)
    components["securitySchemes"] = {
        "EndpointToken": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "The header 'Authorization: EndpointToken <token>'.",
        }
    }
    return document
