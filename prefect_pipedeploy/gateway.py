"""The endpoint gateway: token-protected HTTP endpoints that start executions and answer results.

For: serving every `endpoint` deployment of some work pools (including ones created after the
gateway started) at `POST /endpoints/{endpoint_url_path}`: checking the endpoint token,
validating the body against the deployment's inputs mapping, creating the execution through the
Prefect API (so it is tracked like any other run) and answering DESIGN.md's contract: 200 with
the outputs within the wait budget, 303 to a long-poll `GET .../executions/{id}` after it, 202
with `?wait_for_completion=false`, 500 when the execution fails. Also `GET /health`, and an
OpenAPI description of every endpoint (`/openapi.json`, `/docs`). Every call that creates an
execution emits the Prefect event `prefect-pipedeploy.endpoint.called`.
Not for: running pipelines (worker, pods), resolving inputs at run time (`iomapping.py`), or
starting endpoint deployments from Prefect events (`triggers.py`).

    pipedeploy gateway --pool pipedeploy --host 127.0.0.1 --port 8080
    python -m prefect_pipedeploy.gateway --pool pipedeploy --port 8080     # the same

Where DESIGN.md is silent, this module decides:
- Deployments are looked up by endpoint path at request time in a table of the pools'
  endpoint deployments, re-read at most every `ENDPOINT_CACHE_TTL_S`, and at once when a path
  is unknown. A rotated token works at once (a mismatch re-reads that deployment); the old one
  keeps working for at most `ENDPOINT_CACHE_TTL_S`.
- Inputs: a JSON object; or multipart/form-data (or a urlencoded form) whose text fields are
  taken as they are for string inputs and parsed as JSON for the other types. Pipeline inputs
  the mapping leaves out are accepted under their own name, checked against the pipeline's
  parameter types. A null optional input counts as not given.
- File inputs are stored in the data store under `uploads/<uuid>/<file name>` before the
  execution is created (its id does not exist yet); the run's parameter is
  {"datastore_path": key} and the execution downloads it and passes {"path": <local file>}.
- A single file output: a succeeded execution that returned no outputs to the caller and wrote
  exactly one output to the data store (an output mapped to a datastore_path). Its bytes are the
  answer, as application/octet-stream with the file name in Content-Disposition, the execution
  id in X-Execution-Id and the output name in X-Output-Name, unless the caller accepts only
  application/json. A pipeline's {"path": ...} output sent to the caller stays JSON: that path is
  on the machine that ran the execution, not this one.
- A Failed or Crashed execution the worker will retry (attempts left under `max_retries`) is
  not final: the gateway waits for the retry (up to `RETRY_GRACE_S` for it to be queued).
- A disabled (paused) deployment answers 409. Wrong tokens are counted per client address
  (X-Forwarded-For is honoured from the addresses uvicorn trusts, 127.0.0.1 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import email.message
import email.utils
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote
from uuid import UUID

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import emit_event
from prefect.exceptions import EventTooLarge, ObjectNotFound, PrefectHTTPStatusError
from prefect.logging import get_logger
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from prefect_pipedeploy.datastore import DataStore, DataStoreError, DataStoreObjectNotFound
from prefect_pipedeploy.exceptions import PipeDeployError, ServerUnavailable
from prefect_pipedeploy.fastcreate import create_run
from prefect_pipedeploy.iomapping import SECRET_MASK, aload_data_store, file_input_marker
from prefect_pipedeploy.listing import read_all_deployments
from prefect_pipedeploy.records import read_outputs, read_stored_outputs
from prefect_pipedeploy.sdk import EXECUTION_STATUS
from prefect_pipedeploy.sealed import discard, seal_inputs, sealed_keys
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.spec import DeploymentSpec, ExecutionRule, spec_from_job_variables
from prefect_pipedeploy.tokens import token_matches
from prefect_pipedeploy.triggers import (
    CALLED_EVENT,
    deployment_resource_id,
    endpoint_resource_id,
)

logger = get_logger("prefect_pipedeploy.gateway")

#: Tags of the executions the gateway creates.
RUN_TAGS = ["pipedeploy", "endpoint"]
#: How old the table of endpoints may be before a request re-reads it.
ENDPOINT_CACHE_TTL_S = 1.5
#: How often the gateway asks the API for the state of the executions it waits for.
POLL_INTERVAL_S = 0.15
#: How long a Failed run with retries left may stay Failed before the gateway stops waiting
#: for the worker to queue its retry.
RETRY_GRACE_S = 10.0
#: Retry-After of a 429 for too many waiting executions, and of a 503.
WAITING_RETRY_AFTER_S = 5
#: Where uploaded files go in the data store: `uploads/<uuid>/<file name>`.
UPLOADS_PREFIX = "uploads"
INTERNAL_ERROR = "internal error; see the gateway log"
TOKEN_HEADER_HELP = "send the header 'Authorization: EndpointToken <token>'"
NO_TOKEN_YET = (
    "this endpoint has no token yet; its owner creates one with "
    "`pipedeploy endpoint token <deployment>`"
)


def execution_status(run: FlowRun | None) -> str:
    """Pending | Running | Succeeded | Failed | Error, as the SDK reports an execution."""
    if run is None or run.state is None:
        return "Pending"
    return EXECUTION_STATUS.get(run.state.type, "Pending")


class GatewayError(Exception):
    """An answer other than a result: an HTTP status, a message saying what to change, and
    optional fields (the body is always {"message": ..., **fields})."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.headers = dict(headers or {})
        self.fields = fields

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"message": self.message, **self.fields},
            status_code=self.status_code,
            headers=self.headers,
        )


# ---------------------------------------------------------------------------------------------
# Endpoints: what a deployment serves (pure)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputField:
    """One field an endpoint's body may carry, and the pipeline input it feeds."""

    name: str
    pipeline_input: str
    data_type: str | None
    """string, number, boolean, json, array or file; None for a pipeline input the mapping
    leaves out (checked against `schema`, the pipeline's JSON schema of that parameter)."""
    required: bool
    default: Any = None
    has_default: bool = False
    secret: bool = False
    schema: Mapping[str, Any] = field(default_factory=dict)


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
            )
        )
    taken = {f.name for f in fields}
    for name, schema in properties.items():
        if name in mapped or name in taken:
            continue
        fields.append(
            InputField(
                name=name,
                pipeline_input=name,
                data_type=None,
                required=name in required,
                schema=schema if isinstance(schema, Mapping) else {},
            )
        )
    return fields, {name: how for name, how in set_by.items() if name not in taken}


def endpoint_of(deployment: DeploymentResponse) -> Endpoint | None:
    """The endpoint a deployment serves; None when it is not an endpoint deployment.

    Raises `PipeDeployError` (a SpecError) when its settings are invalid.
    """
    spec = spec_from_job_variables(deployment.job_variables)
    if spec.execution_rule != ExecutionRule.endpoint.value:
        return None
    schema = deployment.parameter_openapi_schema or {}
    fields, set_by = input_fields(
        spec, schema.get("properties") or {}, list(schema.get("required") or [])
    )
    return Endpoint(
        path=(spec.endpoint_url_path or deployment.name).strip("/"),
        deployment_id=deployment.id,
        deployment_name=deployment.name,
        spec=spec,
        fields=tuple(fields),
        set_by_deployment=set_by,
        paused=bool(deployment.paused),
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


# ---------------------------------------------------------------------------------------------
# Inputs: request bodies checked against an endpoint (pure)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart body."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class FieldError:
    """One invalid field: its name and what is wrong, as a phrase ("is required")."""

    field: str
    message: str


@dataclass
class CheckedInputs:
    """A body checked against an endpoint."""

    parameters: dict[str, Any]
    """The execution's parameters by pipeline input name (file inputs are added once stored)."""
    files: dict[str, UploadedFile]
    """Uploaded files by pipeline input name."""
    public: dict[str, Any]
    """The inputs by endpoint field name as events may show them: secrets masked, files
    described by name and size."""
    errors: list[FieldError]


_ABSENT: Any = object()

_EXPECTED = {
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "array": "an array",
    "json": "any JSON value",
    "file": "a file",
}

_SCHEMA_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def json_type(value: Any) -> str:
    """The JSON type name of a value: string, number, boolean, array, object, null (or file)."""
    if isinstance(value, UploadedFile):
        return "a file"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _schema_types(schema: Mapping[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    return []


def _expected(field_: InputField) -> str:
    if field_.data_type is not None:
        return _EXPECTED[field_.data_type]
    kinds = _schema_types(field_.schema)
    names = {"integer": "an integer", "object": "an object", "null": "null"}
    return " or ".join(names.get(k, _EXPECTED.get(k, k)) for k in kinds) or "any JSON value"


def _type_ok(field_: InputField, value: Any) -> bool:
    if field_.data_type is not None:
        return _SCHEMA_TYPES.get(field_.data_type, lambda v: True)(value)
    kinds = [k for k in _schema_types(field_.schema) if k in _SCHEMA_TYPES]
    return not kinds or any(_SCHEMA_TYPES[k](value) for k in kinds)


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _from_form_text(field_: InputField, text: str) -> tuple[Any, str | None]:
    """The value of a form's text field: as is for strings, else parsed as JSON."""
    if field_.data_type == "string" or (
        field_.data_type is None and _schema_types(field_.schema) == ["string"]
    ):
        return text, None
    try:
        return json.loads(text, parse_constant=_refuse_constant), None
    except ValueError:
        if field_.data_type is None or field_.data_type == "json":
            return text, None  # not JSON: the text itself
        return _ABSENT, f"must be {_expected(field_)} written as JSON; got {_preview(text)}"


def _check_value(field_: InputField, raw: Any, form: bool) -> tuple[Any, str | None]:
    """(value, None), (_ABSENT, None) for "not given", or (_ABSENT, problem)."""
    if isinstance(raw, UploadedFile):
        if field_.data_type != "file":
            return _ABSENT, "is a file part, but this input is not a file; send it as a text field"
        if not raw.filename and not raw.data:
            return _ABSENT, None  # a form's empty file input
        return raw, None
    if field_.data_type == "file":
        if form:
            return _ABSENT, "is a file input: send it as a file part (with a filename)"
        return _ABSENT, (
            "is a file input: send the request as multipart/form-data with a file part named "
            f"{field_.name!r}"
        )
    value = raw
    if form:
        value, problem = _from_form_text(field_, raw)
        if problem:
            return _ABSENT, problem
    if value is None:
        if field_.data_type == "json" or (field_.data_type is None and _type_ok(field_, None)):
            return None, None
        if not field_.required:
            return _ABSENT, None
        return _ABSENT, f"must be {_expected(field_)}; got null"
    if not _type_ok(field_, value):
        return _ABSENT, f"must be {_expected(field_)}; got {json_type(value)}"
    return value, None


def _unknown_field(endpoint: Endpoint, name: str) -> str:
    how = endpoint.set_by_deployment.get(name)
    if how is not None:
        return f"is not an endpoint input: the deployment sets it from {how}; remove it"
    accepted = ", ".join(sorted(f.name for f in endpoint.fields)) or "none"
    return f"is not an input of this endpoint; its inputs are: {accepted}"


def check_inputs(
    endpoint: Endpoint, items: Sequence[tuple[str, Any]], *, form: bool = False
) -> CheckedInputs:
    """Check the fields of a body against an endpoint and translate them to pipeline inputs.

    `items` are (field name, value) pairs; values of a form (`form=True`) are text or
    `UploadedFile`s. Every problem is reported, each naming its field; defaults of optional
    inputs are applied.
    """
    errors: list[FieldError] = []
    given: dict[str, Any] = {}
    for name, value in items:
        if name in given:
            errors.append(FieldError(name, "is given more than once; give it once"))
            continue
        given[name] = value
    known = {f.name for f in endpoint.fields}
    errors += [
        FieldError(name, _unknown_field(endpoint, name)) for name in given if name not in known
    ]

    parameters: dict[str, Any] = {}
    files: dict[str, UploadedFile] = {}
    public: dict[str, Any] = {}
    for field_ in endpoint.fields:
        value = _ABSENT
        if field_.name in given:
            value, problem = _check_value(field_, given[field_.name], form)
            if problem:
                errors.append(FieldError(field_.name, problem))
                continue
        if value is _ABSENT:
            if field_.required:
                errors.append(FieldError(field_.name, f"is required ({_expected(field_)})"))
            elif field_.has_default:
                parameters[field_.pipeline_input] = copy.deepcopy(field_.default)
                public[field_.name] = SECRET_MASK if field_.secret else field_.default
            continue
        if isinstance(value, UploadedFile):
            files[field_.pipeline_input] = value
            public[field_.name] = {"filename": value.filename, "size": len(value.data)}
        else:
            parameters[field_.pipeline_input] = value
            public[field_.name] = SECRET_MASK if field_.secret else value
    return CheckedInputs(parameters=parameters, files=files, public=public, errors=errors)


def invalid_inputs_message(errors: Sequence[FieldError]) -> str:
    """One sentence naming every invalid field."""
    return "the inputs are invalid: " + "; ".join(f"{e.field!r} {e.message}" for e in errors)


def safe_filename(name: str | None) -> str:
    """A file name fit for a data-store key: its last path segment, in letters, digits, '.',
    '-' and '_' (others become '_'), at most 100 characters; 'upload' when nothing is left."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    return base[:100] or "upload"


def _header_param(value: str, header: str, param: str) -> str | None:
    message = email.message.Message()
    message[header] = value
    found = message.get_param(param, header=header)
    if isinstance(found, tuple):  # RFC 2231 (charset, language, value)
        found = email.utils.collapse_rfc2231_value(found)
    return str(found) if found is not None else None


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str | UploadedFile]]:
    """The fields of a multipart/form-data body: text fields as str, file parts as
    `UploadedFile`. Raises `GatewayError` (400) for a body that is not well formed."""
    boundary = _header_param(content_type, "content-type", "boundary")
    if not boundary:
        raise GatewayError(400, "the multipart/form-data body has no boundary in its Content-Type")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise GatewayError(400, "the multipart/form-data body has no parts")
    items: list[tuple[str, str | UploadedFile]] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            return items  # the closing delimiter
        head, separator, content = chunk.partition(b"\r\n\r\n")
        if not separator:
            raise GatewayError(400, "a part of the multipart/form-data body has no headers")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        field_name = _header_param(disposition, "content-disposition", "name")
        if not field_name:
            raise GatewayError(400, "a part of the multipart/form-data body has no field name")
        filename = _header_param(disposition, "content-disposition", "filename")
        if filename is not None:
            items.append(
                (
                    field_name,
                    UploadedFile(
                        filename=filename,
                        content_type=headers.get("content-type", "application/octet-stream"),
                        data=content,
                    ),
                )
            )
        else:
            items.append((field_name, content.decode("utf-8", "replace")))
    raise GatewayError(400, "the multipart/form-data body is cut short: it has no closing boundary")


def parse_body(content_type: str | None, body: bytes) -> tuple[list[tuple[str, Any]], bool]:
    """The fields of a request body, and whether they came from a form (text values)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("", "application/json") or media.endswith("+json"):
        if not body.strip():
            return [], False
        try:
            data = json.loads(body, parse_constant=_refuse_constant)
        except UnicodeDecodeError:
            raise GatewayError(400, "the body is not UTF-8 JSON") from None
        except ValueError as exc:
            raise GatewayError(
                400, f"the body is not valid JSON ({exc}); send a JSON object of the inputs"
            ) from None
        if not isinstance(data, dict):
            raise GatewayError(
                400, f"the body must be a JSON object of the inputs, not {json_type(data)}"
            )
        return list(data.items()), False
    if media == "multipart/form-data":
        return list(parse_multipart(body, content_type or "")), True
    if media == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return list(parse_qsl(text, keep_blank_values=True)), True
    raise GatewayError(
        415,
        f"content type {media!r} is not accepted; send application/json, or "
        "multipart/form-data when the endpoint takes a file",
    )


_TRACEBACK_START = "Traceback (most recent call last)"
_FRAME_LINE = re.compile(r'^\s*File "[^"]*", line \d+.*$', re.MULTILINE)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s\"'\\/:;,()<>]+)+[\\/]([^\s\"'\\/:;,()<>]+\.py)\b")


def public_message(text: str | None, limit: int = 2000) -> str:
    """A state message fit for a response: no traceback, no file paths (a path to a Python
    file keeps only its file name), at most `limit` characters."""
    if not text:
        return ""
    text = text.split(_TRACEBACK_START, 1)[0]
    text = _FRAME_LINE.sub("", text)
    text = _PATH.sub(r"\1", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wants_json_only(accept: str | None) -> bool:
    """Whether an Accept header asks for JSON and refuses raw bytes."""
    if not accept:
        return False
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return "application/json" in kinds and not kinds & {
        "*/*",
        "application/*",
        "application/octet-stream",
    }


# ---------------------------------------------------------------------------------------------
# Limits and waiting (pure decisions, small in-memory state)
# ---------------------------------------------------------------------------------------------


class BadTokenLimiter:
    """Wrong tokens per client over a sliding minute; past the limit the client waits."""

    window_s = 60.0
    max_clients = 10_000

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def record(self, client: str, now: float) -> None:
        self._seen.setdefault(client, deque()).append(now)
        if len(self._seen) > self.max_clients:
            for known in list(self._seen):
                self._forget_old(known, now)

    def retry_after(self, client: str, now: float, limit: int) -> int | None:
        """Seconds until `client` may try again, or None when it may now."""
        if client not in self._seen:
            return None
        times = self._forget_old(client, now)
        if len(times) < limit:
            return None
        return max(1, math.ceil(times[-limit] + self.window_s - now))

    def _forget_old(self, client: str, now: float) -> deque[float]:
        times = self._seen[client]
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._seen[client]
        return times


def settled(run: FlowRun, max_retries: int, now: datetime) -> bool:
    """Whether an execution has its final answer.

    A Failed or Crashed run that started and has attempts left (`max_retries`) is about to be
    retried by the worker (the same run, Scheduled again): it is settled only if it stays
    failed for `RETRY_GRACE_S`.
    """
    state = run.state
    if state is None or not state.is_final():
        return False
    if state.type not in (StateType.FAILED, StateType.CRASHED):
        return True
    if run.run_count == 0 or run.run_count > max_retries:
        return True
    return now - state.timestamp >= timedelta(seconds=RETRY_GRACE_S)


@dataclass
class _Watch:
    max_retries: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    latest: FlowRun | None = None
    waiters: int = 0


class RunWatcher:
    """Waits for executions to settle: one API call per tick serves every waiting request."""

    def __init__(self, client: PrefectClient, interval_s: float = POLL_INTERVAL_S) -> None:
        self._client = client
        self._interval_s = interval_s
        self._watches: dict[UUID, _Watch] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait(
        self, run_id: UUID, max_retries: int, timeout_s: float
    ) -> tuple[FlowRun | None, bool]:
        """The latest state of the run seen, and whether it settled within `timeout_s`."""
        watch = self._watches.setdefault(run_id, _Watch(max_retries))
        watch.waiters += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        self._wake.set()
        try:
            await asyncio.wait_for(watch.done.wait(), timeout=max(timeout_s, 0.001))
        except asyncio.TimeoutError:
            pass
        finally:
            watch.waiters -= 1
            if watch.waiters == 0:
                self._watches.pop(run_id, None)
        return watch.latest, watch.done.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _poll(self) -> None:
        while self._watches:
            self._wake.clear()
            pending = [run_id for run_id, w in self._watches.items() if not w.done.is_set()]
            for start in range(0, len(pending), 200):
                ids = pending[start : start + 200]
                try:
                    runs = await self._client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                        limit=len(ids),
                    )
                except Exception as exc:  # the API is away: the waiters time out into 303s
                    logger.warning(
                        "Could not read the state of %d executions: %s",
                        len(ids),
                        exc,
                        extra={"action": "poll_failed"},
                    )
                    await asyncio.sleep(1.0)
                    break
                now = datetime.now(timezone.utc)
                for run in runs:
                    watch = self._watches.get(run.id)
                    if watch is None:
                        continue
                    watch.latest = run
                    if settled(run, watch.max_retries, now):
                        watch.done.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)


# ---------------------------------------------------------------------------------------------
# The gateway: the one place with effects (Prefect API, data store, events)
# ---------------------------------------------------------------------------------------------


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _token_of(request: Request, allow_query: bool) -> tuple[str | None, bool]:
    """The token a request shows, and whether it came from `?token=`."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "endpointtoken" and value.strip():
            return value.strip(), False
        return None, False
    if allow_query and request.query_params.get("token"):
        return request.query_params["token"], True
    return None, False


def _format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} bytes"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is over `limit` bytes (whether it
    declares a Content-Length or comes chunked)."""
    too_large = GatewayError(
        413, f"the body is larger than this gateway's limit of {_format_bytes(limit)}"
    )
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def execution_location(request: Request, path: str, run_id: UUID, token: str | None) -> str:
    """Where the result of an execution is long-polled (the query token is kept, if any)."""
    root = request.scope.get("root_path", "").rstrip("/")
    location = f"{root}/endpoints/{quote(path)}/executions/{run_id}"
    return location + (f"?token={quote(token, safe='')}" if token else "")


class Gateway:
    """Serves the endpoint deployments of `pools` through one Prefect client."""

    def __init__(self, pools: Sequence[str], client: PrefectClient) -> None:
        self.pools = list(pools)
        self.client = client
        self.limiter = BadTokenLimiter()
        self.watcher = RunWatcher(client)
        self.create_lock = asyncio.Lock()
        self._table: dict[str, Endpoint] = {}
        self._loaded_at = -math.inf
        self._refresh_lock = asyncio.Lock()
        self._reported: set[str] = set()

    async def close(self) -> None:
        await self.watcher.close()

    # ---- endpoints ----------------------------------------------------------------------------

    async def endpoints(self, not_before: float | None = None) -> dict[str, Endpoint]:
        """The endpoint table, re-read when older than the cache TTL or loaded before
        `not_before` (a monotonic time)."""
        now = time.monotonic()
        threshold = max(
            now - ENDPOINT_CACHE_TTL_S, not_before if not_before is not None else -math.inf
        )
        if self._loaded_at >= threshold:
            return self._table
        async with self._refresh_lock:
            if self._loaded_at >= threshold:  # another request refreshed it meanwhile
                return self._table
            started = time.monotonic()
            table, problems = endpoint_table(await self._read_deployments())
            for problem in problems:
                if problem not in self._reported:
                    self._reported.add(problem)
                    logger.warning(problem, extra={"action": "endpoint_not_served"})
            self._table, self._loaded_at = table, started
        return self._table

    async def _read_deployments(self) -> list[DeploymentResponse]:
        return await read_all_deployments(
            self.client, work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=self.pools))
        )

    async def endpoint(self, path: str, arrived: float) -> Endpoint:
        """The endpoint at `path`; a deployment created before the request arrived is seen."""
        endpoint = (await self.endpoints()).get(path)
        if endpoint is None:
            endpoint = (await self.endpoints(not_before=arrived)).get(path)
        if endpoint is None:
            raise GatewayError(404, f"no endpoint at {path!r}")
        return endpoint

    async def authenticate(self, endpoint: Endpoint, token: str | None, client: str) -> Endpoint:
        """The endpoint if `token` is its token (re-read on a mismatch: it may just have been
        rotated); 401 otherwise, and a wrong token counts against the client."""
        if token is None:
            needs = (
                f"this endpoint needs its token; {TOKEN_HEADER_HELP}"
                if endpoint.spec.endpoint_token_hash
                else NO_TOKEN_YET  # e.g. made by `prefect deploy`
            )
            raise GatewayError(401, needs, headers={"WWW-Authenticate": "EndpointToken"})
        if token_matches(token, endpoint.spec.endpoint_token_hash):
            return endpoint
        fresh = await self._reread(endpoint)
        if fresh is not None and token_matches(token, fresh.spec.endpoint_token_hash):
            return fresh
        self.limiter.record(client, time.monotonic())
        logger.info(
            "Wrong token for endpoint %r from %s",
            endpoint.path,
            client,
            extra={"action": "bad_token"},
        )
        if fresh is not None and not fresh.spec.endpoint_token_hash:
            message = NO_TOKEN_YET
        else:
            message = (
                "the endpoint token is wrong; use the token shown when the deployment was "
                "created or last rotated (`pipedeploy endpoint token <deployment>` makes a new one)"
            )
        raise GatewayError(401, message, headers={"WWW-Authenticate": "EndpointToken"})

    async def _reread(self, endpoint: Endpoint) -> Endpoint | None:
        try:
            deployment = await self.client.read_deployment(endpoint.deployment_id)
            fresh = endpoint_of(deployment)
        except (ObjectNotFound, PipeDeployError):
            return None
        if fresh is not None and fresh.path == endpoint.path:
            self._table = {**self._table, fresh.path: fresh}
            return fresh
        return None

    def refuse_blocked(self, client: str) -> None:
        retry = self.limiter.retry_after(
            client, time.monotonic(), get_settings().gateway_bad_token_limit
        )
        if retry is not None:
            raise GatewayError(
                429,
                f"too many wrong endpoint tokens from this client; try again in {retry} s",
                headers={"Retry-After": str(retry)},
            )

    # ---- executions ---------------------------------------------------------------------------

    async def data_store(self) -> DataStore:
        try:
            return await aload_data_store(None, self.client)
        except DataStoreError as exc:
            logger.error("No usable data store: %s", exc, extra={"action": "no_data_store"})
            raise GatewayError(
                503,
                "the gateway cannot reach its data store, which keeps endpoint files; "
                "ask its operator to configure one",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
            ) from exc

    async def store_uploads(self, checked: CheckedInputs) -> list[str]:
        """Store the uploaded files and put their markers into the parameters; their keys."""
        if not checked.files:
            return []
        store = await self.data_store()
        keys: list[str] = []
        try:
            for pipeline_input, upload in checked.files.items():
                key = f"{UPLOADS_PREFIX}/{uuid.uuid4().hex}/{safe_filename(upload.filename)}"
                await store.aupload(io.BytesIO(upload.data), key)
                keys.append(key)
                checked.parameters[pipeline_input] = file_input_marker(key)
        except DataStoreError as exc:
            logger.error("Could not store an upload: %s", exc, extra={"action": "upload_failed"})
            await self.delete_uploads(keys)
            raise GatewayError(
                503,
                "the data store did not take the uploaded file; try again later",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
            ) from exc
        return keys

    async def delete_uploads(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        with contextlib.suppress(Exception):
            store = await aload_data_store(None, self.client)
            for key in keys:
                await store.adelete_object(key, missing_ok=True)

    async def create_execution(self, endpoint: Endpoint, parameters: dict[str, Any]) -> FlowRun:
        """Create the execution, unless too many of the deployment's wait already (429).

        Creates are serialised, and a 503 from a busy SQLite server is retried within
        milliseconds (`fastcreate.py`) instead of Prefect's seconds.
        """
        limit = get_settings().gateway_max_waiting
        async with self.create_lock:
            waiting = await self.client.count_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[endpoint.deployment_id])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
                    )
                ),
            )
            if waiting >= limit:
                raise GatewayError(
                    429,
                    f"this endpoint has {waiting} executions waiting, its limit; try again later",
                    headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
                )
            try:
                return await create_run(
                    self.client, endpoint.deployment_id, parameters=parameters, tags=RUN_TAGS
                )
            except ObjectNotFound:
                self._loaded_at = -math.inf
                raise GatewayError(404, f"no endpoint at {endpoint.path!r}") from None
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code in (409, 422):
                    detail = _detail_of(exc.response)
                    raise GatewayError(
                        400, f"the pipeline refused the inputs: {public_message(detail)}"
                    ) from None
                raise

    def emit_called(self, endpoint: Endpoint, run_id: UUID, public: dict[str, Any]) -> None:
        """Emit `prefect-pipedeploy.endpoint.called` (never fails the call)."""
        resource = {
            "prefect.resource.id": endpoint_resource_id(endpoint.path),
            "prefect.resource.name": endpoint.path,
        }
        related = [
            {
                "prefect.resource.id": deployment_resource_id(endpoint.deployment_id),
                "prefect.resource.role": "deployment",
                "prefect.resource.name": endpoint.deployment_name,
            },
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.role": "flow-run",
            },
        ]
        payload: dict[str, Any] = {"inputs": public, "execution_id": str(run_id)}
        try:
            try:
                emit_event(CALLED_EVENT, resource=resource, related=related, payload=payload)
            except EventTooLarge:
                payload["inputs"] = "(omitted: too large for an event)"
                emit_event(CALLED_EVENT, resource=resource, related=related, payload=payload)
        except Exception as exc:
            logger.warning(
                "Could not emit %s: %s", CALLED_EVENT, exc, extra={"action": "event_failed"}
            )

    async def read_run(self, endpoint: Endpoint, execution_id: str) -> FlowRun:
        try:
            run = await self.client.read_flow_run(UUID(execution_id))
        except (ValueError, ObjectNotFound):
            run = None
        if run is None or run.deployment_id != endpoint.deployment_id:
            raise GatewayError(404, f"endpoint {endpoint.path!r} has no execution {execution_id!r}")
        return run

    # ---- answers ------------------------------------------------------------------------------

    async def answer(
        self, request: Request, endpoint: Endpoint, run: FlowRun, wait_s: float, location: str
    ) -> Response:
        """The result if the execution settles within `wait_s`, else a 303 to `location`."""
        max_retries = endpoint.spec.max_retries
        if not settled(run, max_retries, datetime.now(timezone.utc)):
            latest, done = await self.watcher.wait(run.id, max_retries, wait_s)
            if not done:
                return JSONResponse(
                    {
                        "message": "the execution is still running; follow Location (GET, "
                        "same token) to wait for its result",
                        "execution_id": str(run.id),
                        "status": execution_status(latest or run),
                    },
                    status_code=303,
                    headers={"Location": location, "X-Execution-Id": str(run.id)},
                )
            assert latest is not None
            run = latest
        return await self.final_answer(request, run)

    async def final_answer(self, request: Request, run: FlowRun) -> Response:
        state = run.state
        assert state is not None
        headers = {"X-Execution-Id": str(run.id)}
        if state.type != StateType.COMPLETED:
            message = public_message(state.message) or f"the execution ended {state.name}"
            return JSONResponse(
                {"message": message, "execution_id": str(run.id), "status": execution_status(run)},
                status_code=500,
                headers=headers,
            )
        outputs = await read_outputs(self.client, run.id) or {}
        if not outputs and not wants_json_only(request.headers.get("accept")):
            stored = await read_stored_outputs(self.client, run.id) or {}
            if len(stored) == 1:
                name, key = next(iter(stored.items()))
                return await self.file_answer(run.id, name, key)
        return JSONResponse({"execution_id": str(run.id), "outputs": outputs}, headers=headers)

    async def file_answer(self, run_id: UUID, output_name: str, key: str) -> Response:
        """The bytes of the execution's single file output, streamed from a temporary copy."""
        store = await self.data_store()
        handle, local = tempfile.mkstemp(prefix="pipedeploy-gateway-")
        os.close(handle)
        try:
            await store.adownload(key, local)
        except DataStoreObjectNotFound:
            _unlink(local)
            raise GatewayError(
                500,
                f"output {output_name!r} was stored at {key!r} but is no longer in the data store",
                execution_id=str(run_id),
                status="Succeeded",
            ) from None
        except DataStoreError as exc:
            _unlink(local)
            logger.error(
                "Could not fetch output %r: %s", key, exc, extra={"action": "output_failed"}
            )
            raise GatewayError(
                503,
                f"the data store did not return output {output_name!r}; try again",
                headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
                execution_id=str(run_id),
            ) from exc
        return FileResponse(
            local,
            media_type="application/octet-stream",
            filename=key.rsplit("/", 1)[-1],
            headers={"X-Execution-Id": str(run_id), "X-Output-Name": output_name},
            background=BackgroundTask(_unlink, local),
        )

    # ---- the two calls ------------------------------------------------------------------------

    async def authorized_endpoint(
        self, request: Request, path: str, arrived: float, allow_query: bool
    ) -> tuple[Any, str | None, bool]:
        """The endpoint at `path` if the caller's token opens it (else 401/404/429)."""
        client = _client_address(request)
        self.refuse_blocked(client)
        endpoint = await self.endpoint(path, arrived)
        token, in_query = _token_of(request, allow_query=allow_query)
        return await self.authenticate(endpoint, token, client), token, in_query

    async def call(self, request: Request, path: str, wait_for_completion: bool) -> Response:
        """POST /endpoints/{path}: check, create the execution, answer."""
        arrived = time.monotonic()
        endpoint, _, _ = await self.authorized_endpoint(request, path, arrived, allow_query=False)
        if endpoint.paused:
            raise GatewayError(
                409,
                f"endpoint {path!r} is disabled; its owner enables it with "
                "update_deployment(..., disabled=False)",
            )
        settings = get_settings()
        body = await read_body(request, settings.gateway_max_body_bytes)
        items, form = parse_body(request.headers.get("content-type"), body)
        checked = check_inputs(endpoint, items, form=form)
        if checked.errors:
            raise GatewayError(
                400,
                invalid_inputs_message(checked.errors),
                errors=[asdict(error) for error in checked.errors],
            )
        keys = await self.store_uploads(checked)
        parameters: dict[str, Any] = {}
        try:
            parameters = await seal_inputs(self.client, endpoint.spec, checked.parameters)
            run = await self.create_execution(endpoint, parameters)
        except BaseException:
            await self.delete_uploads(keys)
            await discard(self.client, sealed_keys(parameters))
            raise
        self.emit_called(endpoint, run.id, checked.public)
        logger.info(
            "Endpoint %r: execution %s created for %s",
            path,
            run.id,
            _client_address(request),
            extra={"action": "endpoint_called"},
        )
        location = execution_location(request, path, run.id, None)
        if not wait_for_completion:
            return JSONResponse(
                {"execution_id": str(run.id)},
                status_code=202,
                headers={"Location": location, "X-Execution-Id": str(run.id)},
            )
        return await self.answer(request, endpoint, run, settings.gateway_wait_s, location)

    async def results(self, request: Request, path: str, execution_id: str) -> Response:
        """GET /endpoints/{path}/executions/{id}: long-poll an execution's result."""
        endpoint, token, in_query = await self.authorized_endpoint(
            request, path, time.monotonic(), allow_query=True
        )
        run = await self.read_run(endpoint, execution_id)
        location = execution_location(request, path, run.id, token if in_query else None)
        return await self.answer(request, endpoint, run, get_settings().gateway_wait_s, location)


def _detail_of(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except Exception:
        return ""
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# ---------------------------------------------------------------------------------------------
# OpenAPI: the generic routes plus one operation per endpoint
# ---------------------------------------------------------------------------------------------

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
        "required": ["message", "errors"],
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
    400: _error("Invalid inputs; each invalid field is named.", "InvalidInputs"),
    409: _error("The endpoint's deployment is disabled."),
    413: _error("The body is over the gateway's limit."),
    415: _error("The body is neither JSON nor a form."),
    429: _error(
        "Too many waiting executions of this deployment, or too many wrong tokens from this "
        "client (see Retry-After)."
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
    return {
        "summary": f"Call {endpoint.path}",
        "description": f"Runs deployment {endpoint.deployment_name!r}.",
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


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answers {"message": ...}: never a traceback."""

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        messages = {
            404: f"no such page: {request.url.path}; endpoints are at POST /endpoints/<path>",
            405: f"{request.method} is not allowed here; call an endpoint with POST "
            "/endpoints/<path> and fetch a result with GET /endpoints/<path>/executions/<id>",
        }
        message = messages.get(exc.status_code) or str(exc.detail)
        return JSONResponse(
            {"message": message}, status_code=exc.status_code, headers=dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": str(error["loc"][-1]) if error["loc"] else "", "message": error["msg"]}
            for error in exc.errors()
        ]
        message = "; ".join(f"{e['field']!r} {e['message']}" for e in errors)
        return JSONResponse(
            {"message": f"the request is invalid: {message}", "errors": errors}, 400
        )

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return JSONResponse({"message": "the client went away before sending its body"}, 400)

    @app.exception_handler(httpx.TransportError)
    async def api_away(request: Request, exc: httpx.TransportError) -> Response:
        logger.warning("The Prefect API did not answer: %r", exc, extra={"action": "api_away"})
        return JSONResponse(
            {"message": "the Prefect API did not answer; try again shortly"},
            status_code=503,
            headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
        )

    @app.exception_handler(httpx.HTTPStatusError)
    async def api_refused(request: Request, exc: httpx.HTTPStatusError) -> Response:
        logger.error("The Prefect API refused a request: %s", exc, extra={"action": "api_refused"})
        return JSONResponse(
            {"message": "the Prefect API refused a request; see the gateway log"}, 502
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises the exception after this answer, so uvicorn logs its traceback.
        logger.error(
            "Internal error on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            extra={"action": "internal_error"},
        )
        return JSONResponse({"message": INTERNAL_ERROR}, status_code=500)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect-pipedeploy")
    except PackageNotFoundError:
        return "0"


def create_app(pools: Sequence[str], gateway: Gateway | None = None) -> FastAPI:
    """The gateway as an ASGI app serving the endpoint deployments of `pools`.

    It opens its Prefect client (PREFECT_API_URL) when the app starts; pass `gateway` to use
    one made elsewhere (tests).
    """
    pools = list(pools)
    if not pools:
        raise ValueError("the gateway needs at least one work pool to serve")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gateway is not None:
            app.state.gateway = gateway
            yield
            return
        async with get_client() as client:
            app.state.gateway = Gateway(pools, client)
            logger.info(
                "Gateway serving the endpoint deployments of work pools %s",
                ", ".join(pools),
                extra={"action": "gateway_started"},
            )
            try:
                yield
            finally:
                await app.state.gateway.close()

    app = FastAPI(
        title="prefect-pipedeploy gateway",
        version=_version(),
        description=(
            "Token-protected HTTP endpoints of pipeline deployments. Authenticate with "
            "'Authorization: EndpointToken <token>'."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    if gateway is not None:
        app.state.gateway = gateway
    _install_error_handlers(app)

    @app.get("/health", tags=["gateway"], summary="Whether the gateway and its Prefect API answer")
    async def health(request: Request) -> dict[str, Any]:
        endpoints = await _gateway(request).endpoints()
        return {"status": "ok", "pools": pools, "endpoints": sorted(endpoints)}

    @app.post(
        "/endpoints/{endpoint_url_path:path}",
        tags=["endpoints"],
        summary="Call an endpoint (any path; each endpoint is also described on its own)",
        responses=CALL_RESPONSES,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "multipart/form-data": {"schema": {"type": "object"}},
                }
            },
            "security": [{"EndpointToken": []}],
        },
    )
    async def call_endpoint(
        endpoint_url_path: str,
        request: Request,
        wait_for_completion: bool = Query(
            True, description="false: answer 202 as soon as the execution is created."
        ),
    ) -> Response:
        return await _gateway(request).call(
            request, endpoint_url_path.strip("/"), wait_for_completion
        )

    @app.get(
        "/endpoints/{endpoint_url_path:path}/executions/{execution_id}",
        tags=["endpoints"],
        summary="Wait for an execution's result (long-poll)",
        responses=RESULT_RESPONSES,
        openapi_extra={"security": [{"EndpointToken": []}]},
    )
    async def execution_result(
        endpoint_url_path: str,
        execution_id: str,
        request: Request,
        token: str | None = Query(None, description="The endpoint token, instead of the header."),
    ) -> Response:
        del token  # read from the request, with the header first
        return await _gateway(request).results(request, endpoint_url_path.strip("/"), execution_id)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        endpoints = await _gateway(request).endpoints()
        return JSONResponse(openapi_document(app, endpoints))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title}: docs")

    return app


def serve(pools: Sequence[str], host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the gateway with uvicorn until SIGINT/SIGTERM."""
    import uvicorn
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ServerUnavailable(
            "the gateway needs a Prefect API: set PREFECT_API_URL (`pipedeploy up` does)"
        )
    config = uvicorn.Config(
        create_app(pools),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m prefect_pipedeploy.gateway",
        description="Serve the endpoint deployments of work pools over HTTP.",
    )
    parser.add_argument(
        "--pool", action="append", dest="pools", help="Work pool to serve (repeatable)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on.")
    parser.add_argument("--port", type=int, default=8080, help="Port to listen on.")
    args = parser.parse_args(argv)
    try:
        serve(args.pools or [get_settings().default_pool], args.host, args.port)
    except PipeDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
