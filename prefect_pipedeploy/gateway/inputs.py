"""Endpoint inputs: the fields of a body checked against an endpoint's input fields.

For: each field's value checked by the input's type and by the pipeline's parameter type (its
JSON schema, `schema_accepts`; text fields of a form read by type), every problem named by its
field (a secret's value never shown), defaults applied, pipeline input names and the public
view (secrets masked); file names fit for a data-store key. Not for: reading or parsing the
body (`bodies`), storing uploads or creating executions (`service`).
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
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),  # 2.0: the run's validation takes it too
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


def _alternatives(schema: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The schemas of a union (`anyOf`/`oneOf`: how Prefect writes `Optional[int]` or
    `list | None`), or None when `schema` is not one."""
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return [option for option in options if isinstance(option, Mapping)]
    return None


def schema_accepts(schema: Mapping[str, Any], value: Any) -> bool:
    """Whether `value` has a type the JSON schema of a pipeline input allows, as the run's
    parameter validation will see it: types, unions (`anyOf`, `oneOf`), `allOf`, `enum` and the
    items of arrays. What a schema does not say (a `$ref` to a model, formats) is allowed: the
    execution checks it."""
    alternatives = _alternatives(schema)
    if alternatives is not None and not any(schema_accepts(s, value) for s in alternatives):
        return False
    every = schema.get("allOf")
    if isinstance(every, list) and not all(
        schema_accepts(s, value) for s in every if isinstance(s, Mapping)
    ):
        return False
    if isinstance(schema.get("enum"), list) and not any(
        value == option and type(value) is type(option) for option in schema["enum"]
    ):
        return False
    kinds = [k for k in _schema_types(schema) if k in _SCHEMA_TYPES]
    if kinds and not any(_SCHEMA_TYPES[k](value) for k in kinds):
        return False
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, Mapping):
        return all(schema_accepts(items, item) for item in value)
    return True


_SCHEMA_NAMES = {"integer": "an integer", "object": "an object", "null": "null"}


def describe_schema(schema: Mapping[str, Any]) -> str:
    """What a JSON schema of a pipeline input takes, in words ("an integer or null")."""
    alternatives = _alternatives(schema)
    if alternatives is not None:
        options = list(dict.fromkeys(describe_schema(s) for s in alternatives))
        return "any JSON value" if "any JSON value" in options else " or ".join(options)
    if isinstance(schema.get("enum"), list):
        return "one of " + json.dumps(schema["enum"])[:200]
    kinds = _schema_types(schema)
    words = " or ".join(_SCHEMA_NAMES.get(k, _EXPECTED.get(k, k)) for k in kinds)
    items = schema.get("items")
    if kinds == ["array"] and isinstance(items, Mapping):
        item = describe_schema(items)
        if item != "any JSON value":
            words += f" whose items are each {item}"
    return words or "any JSON value"


def _expected(field_: InputField) -> str:
    if field_.data_type is not None:
        return _EXPECTED[field_.data_type]
    return describe_schema(field_.schema)


def _type_problem(field_: InputField, value: Any) -> str | None:
    """Why `value` is not of the input's type: the endpoint's (`data_type`), then the
    pipeline's (its parameter schema, which the execution will check); None when it is."""
    if field_.data_type is not None and not _SCHEMA_TYPES.get(field_.data_type, _any)(value):
        return f"must be {_EXPECTED[field_.data_type]}; got {json_type(value)}"
    if field_.data_type != "file" and not schema_accepts(field_.schema, value):
        whose = (
            ""
            if field_.data_type is None
            else f" (the type of pipeline input {field_.pipeline_input!r})"
        )
        return f"must be {describe_schema(field_.schema)}{whose}; got {json_type(value)}"
    return None


def _any(value: Any) -> bool:
    return True


def _type_ok(field_: InputField, value: Any) -> bool:
    return _type_problem(field_, value) is None


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _from_form_text(field_: InputField, text: str) -> tuple[Any, str | None]:
    """The value of a form's text field: as is for strings, else parsed as JSON (the text
    itself when the input takes text and not what it parses to)."""
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
        got = "text that is not JSON" if field_.secret else _preview(text)  # never echo a secret
        return _ABSENT, f"must be {_expected(field_)} written as JSON; got {got}"
    found = json_value_problem(value)
    if found is not None:
        return _ABSENT, found[1]
    if not _type_ok(field_, value) and _type_ok(field_, text):
        return text, None  # "123" for an optional string
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
        if field_.data_type in (None, "json") and _type_ok(field_, None):
            return None, None
        if not field_.required:
            return _ABSENT, None
        return _ABSENT, _type_problem(field_, None)
    return (_ABSENT, problem) if (problem := _type_problem(field_, value)) else (value, None)


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
