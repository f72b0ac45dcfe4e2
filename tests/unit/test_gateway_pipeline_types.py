"""An endpoint's inputs checked against the pipeline's own parameter types (its JSON schema in
the deployment), so a value the execution would refuse is a 400 naming the input, not an
execution that fails (500): unions such as `list | None`, integers behind a "number" mapping,
array items, enums. Also: a secret input's text is never echoed in a message."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from prefect_pipedeploy.gateway.endpoints import Endpoint, input_fields
from prefect_pipedeploy.gateway.inputs import check_inputs, describe_schema, schema_accepts
from prefect_pipedeploy.spec import build_spec

# what Prefect writes for `def pipeline(name: str, times: int = 1, tags: list | None = None,
# ids: list[int] = [], mode: Literal["a", "b"] = "a", note: object = None, pin: int = 0)`
PROPERTIES: dict[str, Any] = {
    "name": {"type": "string", "title": "name", "position": 0},
    "times": {"type": "integer", "default": 1, "title": "times", "position": 1},
    "tags": {
        "anyOf": [{"items": {}, "type": "array"}, {"type": "null"}],
        "default": None,
        "title": "tags",
        "position": 2,
    },
    "ids": {"type": "array", "items": {"type": "integer"}, "default": [], "position": 3},
    "mode": {"enum": ["a", "b"], "type": "string", "default": "a", "position": 4},
    "note": {"default": None, "title": "note", "position": 5},
    "pin": {"type": "integer", "default": 0, "position": 6},
}
MAPPING = [
    {"pipeline_input_name": "name", "endpoint_input_name": "name", "data_type": "string"},
    {
        "pipeline_input_name": "times",
        "endpoint_input_name": "count",
        "data_type": "number",
        "default_value": 1,
    },
    {
        "pipeline_input_name": "pin",
        "endpoint_input_name": "pin",
        "data_type": "number",
        "is_secret": True,
        "default_value": 0,
    },
]


def endpoint() -> Endpoint:
    spec = build_spec(inputs_mapping=MAPPING)
    fields, set_by = input_fields(spec, PROPERTIES, ["name"])
    return Endpoint(
        path="types",
        deployment_id=uuid.uuid4(),
        deployment_name="types",
        spec=spec,
        fields=tuple(fields),
        set_by_deployment=set_by,
    )


@pytest.mark.parametrize(
    ("schema", "value", "accepted"),
    [
        (PROPERTIES["tags"], ["x", 1], True),
        (PROPERTIES["tags"], None, True),
        (PROPERTIES["tags"], "", False),
        (PROPERTIES["tags"], {"a": 1}, False),
        (PROPERTIES["times"], 3, True),
        (PROPERTIES["times"], 1.5, False),
        (PROPERTIES["times"], 2.0, True),  # the run's validation takes it too
        (PROPERTIES["times"], True, False),
        (PROPERTIES["ids"], [1, 2], True),
        (PROPERTIES["ids"], [1, "2"], False),
        (PROPERTIES["mode"], "b", True),
        (PROPERTIES["mode"], "c", False),
        (PROPERTIES["note"], {"any": ["thing"]}, True),
        ({"$ref": "#/definitions/Model"}, 1, True),
        ({"allOf": [{"type": "number"}, {"type": "integer"}]}, 2.5, False),
        ({"type": ["string", "null"]}, None, True),
    ],
)
def test_schema_accepts(schema: dict[str, Any], value: Any, accepted: bool) -> None:
    assert schema_accepts(schema, value) is accepted


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        (PROPERTIES["tags"], "an array or null"),
        (PROPERTIES["ids"], "an array whose items are each an integer"),
        (PROPERTIES["mode"], 'one of ["a", "b"]'),
        (PROPERTIES["note"], "any JSON value"),
        ({"anyOf": [{}, {"type": "null"}]}, "any JSON value"),
    ],
)
def test_describe_schema(schema: dict[str, Any], words: str) -> None:
    assert describe_schema(schema) == words


@pytest.mark.parametrize(
    ("given", "field", "message"),
    [
        # before: accepted, and the execution failed ("tags: Input should be a valid list")
        ({"tags": ""}, "tags", "must be an array or null; got a string"),
        (
            {"ids": [1, "2"]},
            "ids",
            "must be an array whose items are each an integer; got an array",
        ),
        ({"mode": "c"}, "mode", 'must be one of ["a", "b"]; got a string'),
        # before: accepted as a number, and the execution failed (times: int)
        (
            {"count": 1.5},
            "count",
            "must be an integer (the type of pipeline input 'times'); got a number",
        ),
    ],
)
def test_a_value_the_pipeline_would_refuse_is_refused_by_name(
    given: dict[str, Any], field: str, message: str
) -> None:
    checked = check_inputs(endpoint(), [("name", "n"), *given.items()])
    assert [(e.field, e.message) for e in checked.errors] == [(field, message)]


def test_values_the_pipeline_takes_pass() -> None:
    checked = check_inputs(
        endpoint(),
        [("name", "n"), ("count", 3), ("tags", None), ("ids", [1]), ("mode", "b"), ("note", 1.5)],
    )
    assert not checked.errors, checked.errors
    assert checked.parameters["times"] == 3 and checked.parameters["tags"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("123", "123"), ("null", None), ('["a"]', '["a"]'), ("plain", "plain")],
)
def test_a_form_text_is_text_when_the_input_takes_text_and_not_its_json(
    text: str, expected: Any
) -> None:
    """An optional string: "null" is null; "123" and '["a"]' stay text (before, "123" became the
    number 123, which the execution refused)."""
    spec = build_spec(inputs_mapping=[])
    properties = {"label": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}}
    fields, _ = input_fields(spec, properties, [])
    types = Endpoint("t", uuid.uuid4(), "t", spec, tuple(fields), {})
    checked = check_inputs(types, [("label", text)], form=True)
    assert not checked.errors, checked.errors
    assert checked.parameters["label"] == expected


def test_a_secret_inputs_text_is_never_echoed() -> None:
    """Before: a secret number input sent as text that is not JSON was echoed in the 400."""
    checked = check_inputs(endpoint(), [("name", "n"), ("pin", "hunter2")], form=True)
    assert checked.errors and checked.errors[0].field == "pin"
    assert "hunter2" not in checked.errors[0].message, checked.errors
    open_checked = check_inputs(endpoint(), [("name", "n"), ("count", "abc")], form=True)
    assert "'abc'" in open_checked.errors[0].message  # a plain input's text still is
