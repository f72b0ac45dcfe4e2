"""Request bodies of endpoint calls: read within limits, parsed, checked against an endpoint.

For: the body (JSON, multipart/form-data, a urlencoded form), each field checked against the
endpoint's input fields, every problem named by its field. Not for: storing uploads or creating
executions (`service`).
"""

from __future__ import annotations

import copy
import email.message
import email.utils
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from prefect_pipedeploy.gateway.answers import GatewayError
from prefect_pipedeploy.gateway.endpoints import Endpoint, InputField
from prefect_pipedeploy.iomapping import SECRET_MASK


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
