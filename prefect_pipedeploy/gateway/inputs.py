"""Endpoint inputs: the fields of a body checked against an endpoint's input fields.

For: each field's value checked by the input's type (text fields of a form read by type), every
problem named by its field, defaults applied, pipeline input names and the public view (secrets
masked); file names fit for a data-store key. Not for: reading or parsing the body (`bodies`),
storing uploads or creating executions (`service`).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect_pipedeploy.gateway.bodies import (
    MAX_DEPTH,
    UploadedFile,
    json_type,
    json_value_problem,
    refuse_json_constant,
)
from prefect_pipedeploy.gateway.endpoints import Endpoint, InputField
from prefect_pipedeploy.gateway.uploads import UPLOADS_PREFIX
from prefect_pipedeploy.iomapping import SECRET_MASK, file_input_marker
from prefect_pipedeploy.prefect_api.sealed import REFERENCE_PREFIX, secret_inputs


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


def _from_form_text(field_: InputField, text: str) -> tuple[Any, str | None]:
    """The value of a form's text field: as is for strings, else parsed as JSON."""
    if field_.data_type == "string" or (
        field_.data_type is None and _schema_types(field_.schema) == ["string"]
    ):
        return text, None
    try:
        value = json.loads(text, parse_constant=refuse_json_constant)
    except RecursionError:
        return _ABSENT, f"is nested deeper than {MAX_DEPTH} levels of arrays and objects"
    except ValueError:
        if field_.data_type is None or field_.data_type == "json":
            return text, None  # not JSON: the text itself
        return _ABSENT, f"must be {_expected(field_)} written as JSON; got {_preview(text)}"
    found = json_value_problem(value)
    if found is not None:
        return _ABSENT, found[1]
    return value, None


def _check_value(field_: InputField, raw: Any, form: bool) -> tuple[Any, str | None]:
    """(value, None), (_ABSENT, None) for "not given", or (_ABSENT, problem)."""
    if isinstance(raw, UploadedFile):
        if field_.data_type != "file":
            return _ABSENT, "is a file part, but this input is not a file; send it as a text field"
        if not raw.filename and not raw.size:
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
            public[field_.name] = {"filename": value.filename, "size": value.size}
        else:
            parameters[field_.pipeline_input] = value
            public[field_.name] = SECRET_MASK if field_.secret else value
    return CheckedInputs(parameters=parameters, files=files, public=public, errors=errors)


def invalid_inputs_message(errors: Sequence[FieldError]) -> str:
    """One sentence naming every invalid field."""
    return "the inputs are invalid: " + "; ".join(f"{e.field!r} {e.message}" for e in errors)


def encoded_size(value: Any) -> int:
    """Bytes of `value` as JSON the way the Prefect server measures an execution's parameters
    against its `max_parameter_size`: compact, with non-ASCII characters escaped."""
    return len(json.dumps(value, separators=(",", ":")).encode())


def oversized_message(endpoint: Endpoint, checked: CheckedInputs, limit: int) -> str | None:
    """Why the execution's parameters, as they will be sent (secret inputs sealed into a
    reference, files as their data-store markers), are over what the Prefect server stores for
    one run (`limit`, its `max_parameter_size`; 0: no limit), naming the largest input; None
    when they fit."""
    sent = dict(checked.parameters)
    for name in secret_inputs(endpoint.spec):
        if name in sent:
            sent[name] = REFERENCE_PREFIX + "0" * 32
    for name, upload in checked.files.items():
        sent[name] = file_input_marker(
            f"{UPLOADS_PREFIX}/{'0' * 32}/{safe_filename(upload.filename)}"
        )
    size = encoded_size(sent)
    if limit <= 0 or size <= limit:
        return None
    names = {f.pipeline_input: f.name for f in endpoint.fields}
    largest = max(sent, key=lambda name: encoded_size(sent[name]))
    return (
        f"the inputs take {size:,} bytes once encoded as JSON, over the {limit:,} bytes the "
        "Prefect server stores for one execution (PREFECT_SERVER_API_MAX_PARAMETER_SIZE); the "
        "largest is "
        f"{names.get(largest, largest)!r} ({encoded_size(sent[largest]):,} bytes): send large "
        "data as a file input (multipart/form-data) or through the data store"
    )


def safe_filename(name: str | None) -> str:
    """A file name fit for a data-store key: its last path segment, in letters, digits, '.',
    '-' and '_' (others become '_'), at most 100 characters; 'upload' when nothing is left."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    return base[:100] or "upload"


# ---- bodies --------------------------------------------------------------------------------------
