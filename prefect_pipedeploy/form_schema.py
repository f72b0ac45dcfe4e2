"""The work pool's form: the deployment spec's JSON schema, kept compact (pure).

For: `compact_form_schema` and `FormModel`, the base of the spec's models, whose JSON schema is
the Prefect UI form of a `pipedeploy` pool and is checked by the server on every flow-run create
(so each sub-schema it saves is saved on every execution). Not for: the spec's fields and rules
(`spec`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import (
    BaseModel,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

_NULL_SCHEMA = {"type": "null"}


def compact_form_schema(
    schema: dict[str, Any], resolve: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Shrink the JSON schema of one model, in place, for the work pool's form; return it.

    On every flow-run create the Prefect server checks the pool's whole `variables` schema
    against the JSON Schema meta-schema, twice, at about 0.3 ms per sub-schema on 2 cores: each
    sub-schema pydantic adds is paid by every execution. The form keeps its fields, titles and
    descriptions; what goes (`resolve` looks up a `$ref`):
    - `anyOf: [X, {"type": "null"}]` becomes X when X has a type, and `default: null` goes. The
      server still accepts null there: before validating values it adds the null branch back to
      every optional property that has a type, at the top level and in definitions. The UI shows
      a property without a default as an empty field.
    - A `$ref` to an enum becomes the enum inline (one sub-schema instead of two).
    - `anyOf: [{"$ref": M}, {"type": "null"}]` of one optional model M becomes M's fields
      inline (its definition then goes, unused): the UI shows them as a group of fields.
    - A discriminated union's `discriminator` (an OpenAPI keyword that JSON Schema ignores)
      goes, and its `oneOf` inside an optional's `anyOf` is flattened into that `anyOf`.
    """
    for name, prop in schema.get("properties", {}).items():
        _inline_enum(prop, name, resolve)
        options = prop.get("anyOf")
        if not isinstance(options, list) or _NULL_SCHEMA not in options:
            continue
        others = [option for option in options if option != _NULL_SCHEMA]
        for option in others:
            _inline_enum(option, None, resolve)
        if len(others) == 1 and "type" in others[0]:
            del prop["anyOf"]
            prop.update({key: value for key, value in others[0].items() if key not in prop})
            if "default" in prop and prop["default"] is None:
                del prop["default"]
        elif len(others) == 1 and "oneOf" in others[0]:
            prop["anyOf"] = [*others[0]["oneOf"], _NULL_SCHEMA]
        elif len(others) == 1 and "$ref" in others[0]:
            target = resolve(others[0])
            if target.get("type") == "object":  # one optional model: its fields, inline
                del prop["anyOf"]
                prop.setdefault("title", name.replace("_", " ").title())  # the UI's label
                prop.update({k: v for k, v in target.items() if k not in prop and k != "title"})
                if "default" in prop and prop["default"] is None:
                    del prop["default"]
    return schema


def _inline_enum(
    prop: dict[str, Any], name: str | None, resolve: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    if "$ref" not in prop:
        return
    target = resolve({"$ref": prop["$ref"]})
    if "enum" not in target:
        return
    del prop["$ref"]
    prop.update({"type": target.get("type", "string"), "enum": target["enum"]})
    if name is not None:
        prop.setdefault("title", name.replace("_", " ").title())


class FormModel(BaseModel):
    """A model whose JSON schema is the compact form of `compact_form_schema`."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        compact_form_schema(handler.resolve_ref_schema(json_schema), handler.resolve_ref_schema)
        return json_schema
