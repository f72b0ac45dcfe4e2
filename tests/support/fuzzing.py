"""Hypothesis strategies for fuzzing the gateway: request bodies from an endpoint's OpenAPI
request schema and arbitrary JSON, odd text, and headers a hostile caller sends.

For: the schema-driven fuzz pass of tests/reliability/test_gateway_hostile.py. `from_schema`
covers the JSON-schema subset the gateway's OpenAPI document uses (type, properties, required,
items, anyOf/oneOf; `{}` or a `$ref` is any JSON value); a value it draws is valid for the
schema, so most bodies reach the execution; `json_values` and `odd_text` draw what a schema
does not allow; `calls` draws whole requests (`Case`), and `opens` says whether one shows the
right token (the gateway's rule, restated). Not for: what an answer must or must not hold (the
test checks that).
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

#: Characters a hostile caller likes: NUL, lone surrogates, bidi controls (RTL marks and
#: overrides), a zero-width joiner, a BOM, 4-byte emoji and a musical symbol, a quote, a
#: backslash, a path separator and `..`.
ODD_CHARACTERS = [
    "\x00",
    "\ud800",
    "\udfff",
    "\u200f",
    "\u202e",
    "\u200d",
    "\ufeff",
    "\U0001f600",
    "\U0001d11e",
    '"',
    "\\",
    "/",
    "..",
]


def odd_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Text mixing ordinary characters with `ODD_CHARACTERS`."""
    return st.lists(
        st.one_of(st.characters(), st.sampled_from(ODD_CHARACTERS)), max_size=max_size
    ).map("".join)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (and the non-JSON floats NaN and Infinity, and integers of any size)."""
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        odd_text(),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(odd_text(12), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def from_schema(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a JSON schema of the gateway's OpenAPI subset."""
    for combined in ("anyOf", "oneOf"):
        if isinstance(schema.get(combined), list) and schema[combined]:
            return st.one_of(*(from_schema(sub) for sub in schema[combined]))
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return st.one_of(*(from_schema({**schema, "type": k}) for k in kind))
    if kind == "string":
        return st.text(max_size=40)
    if kind == "integer":
        return st.integers(-(10**6), 10**6)
    if kind == "number":
        return st.one_of(
            st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False, width=64)
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = schema.get("items")
        return st.lists(from_schema(items if isinstance(items, Mapping) else {}), max_size=4)
    if kind == "object":
        properties = {
            name: from_schema(sub if isinstance(sub, Mapping) else {})
            for name, sub in (schema.get("properties") or {}).items()
        }
        required = set(schema.get("required") or [])
        return st.fixed_dictionaries(
            {name: value for name, value in properties.items() if name in required},
            optional={name: value for name, value in properties.items() if name not in required},
        )
    return json_values(6)


def encoded(value: Any, ascii_only: bool) -> bytes:
    """`value` as a JSON body: escaped to ASCII, or as UTF-8 (a lone surrogate then becomes the
    bytes UTF-8 forbids, as a careless encoder would send them)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


#: Header values are latin-1 text without controls (what an HTTP client can send).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)


def authorizations(right: str, other: str) -> st.SearchStrategy[str | None]:
    """Authorization header values: the right token (often, also with odd spacing or case),
    near misses of it, another endpoint's token, other schemes, junk, or none (None)."""
    near = [
        f"EndpointToken {right[:-1]}",
        f"EndpointToken {right}x",
        f"EndpointToken {right.upper()}",
        f"EndpointToken {right[4:]}",
        f"Bearer {right}",
        f"Basic {right}",
        f"{right}",
        f"EndpointToken{right}",
        f"EndpointToken\t{right}",
        f"EndpointToken {right} {right}",
        f"EndpointToken {other}",
        "EndpointToken",
        "EndpointToken ",
        "",
    ]
    rights = st.sampled_from([f"EndpointToken {right}", f"endpointtoken   {right} "])
    wrongs = st.one_of(
        st.sampled_from(near),
        header_text,
        st.builds(lambda junk: f"EndpointToken {junk}", header_text),
        st.none(),
    )
    # half right, so that most bodies reach the checks behind the token
    return st.booleans().flatmap(lambda right_one: rights if right_one else wrongs)


def token_is_right(authorization: str | None, right: str) -> bool:
    """Whether an Authorization header opens the endpoint: the scheme EndpointToken (any case),
    one space, then the token (surrounding spaces aside). The gateway's rule, restated."""
    if authorization is None:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    return scheme.lower() == "endpointtoken" and value.strip() == right


@dataclass
class Case:
    """One request the fuzz pass sends."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes


def bodies(schema: Mapping[str, Any], secret: str) -> st.SearchStrategy[tuple[bytes, str | None]]:
    """Bodies for an endpoint whose secret input is `api_key`: valid for its `schema` (the
    secret input set to `secret`, or `secret` in a wrong shape), arbitrary JSON, a form of text
    fields, or bytes; each with a content type, sometimes a wrong one. `secret` is only ever
    sent as the `api_key` input."""
    from_endpoint = from_schema(schema).map(
        lambda body: {**body, "api_key": secret} if "api_key" in body else body
    )
    secret_elsewhere = st.builds(
        lambda body, shape: {**body, "api_key": shape},
        from_schema(schema),
        st.sampled_from([[secret], {"k": secret}, secret + "\ud800", 7, None]),
    )
    as_json = st.builds(
        encoded,
        st.one_of(from_endpoint, from_endpoint, secret_elsewhere, json_values()),
        st.booleans(),
    )
    as_form = st.builds(
        lambda fields, with_secret: urllib.parse.urlencode(
            {**fields, "api_key": secret} if with_secret else fields
        ).encode(),
        st.dictionaries(
            st.sampled_from(["name", "times", "tags", "note", "other"]),
            st.text(max_size=20),
            max_size=4,
        ),
        st.booleans(),
    )
    content_types = st.sampled_from(
        [
            "application/json",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=fuzz",
            "text/plain",
            "application/vnd.api+json",
        ]
    )
    return st.one_of(
        st.tuples(as_json, st.sampled_from(["application/json", None])),
        st.tuples(as_form, st.just("application/x-www-form-urlencoded")),
        st.tuples(st.one_of(as_json, as_form, st.binary(max_size=200)), content_types),
    )


def calls(
    endpoint: Mapping[str, str],
    other_token: str,
    schema: Mapping[str, Any],
    secret: str,
    executions: list[str],
) -> st.SearchStrategy[Case]:
    """Requests to an endpoint (its "path" and right "token"): mostly POSTs of `bodies`, some
    GETs of an execution (one of the first three of `executions`, a list the test may grow
    while it runs and never empty; an id no execution has; or none), each with an Authorization
    from `authorizations`, odd extra headers and query parameters.

    What is drawn never depends on how long `executions` is: the GET draws one of five choices
    and the list is read only to name the execution. Before, it drew from a list as long as
    `executions` then was, and once the test had added one, hypothesis met a different number
    of choices for the same prefix and failed the pass (`FlakyStrategyDefinition`)."""
    right = endpoint["token"]
    unknown = str(uuid.uuid4())  # one id no execution has, for the whole pass

    @st.composite
    def case(draw: st.DrawFn) -> Case:
        authorization = draw(authorizations(right, other_token))
        headers = {"Authorization": authorization} if authorization is not None else {}
        extra = draw(
            st.dictionaries(
                st.sampled_from(["X-Fuzz", "Accept", "X-Forwarded-For", "Cookie"]),
                header_text,
                max_size=2,
            )
        )
        headers.update(extra)
        if draw(st.integers(0, 9)) < 8:  # a call
            body, content_type = draw(bodies(schema, secret))
            if content_type is not None:
                headers["Content-Type"] = content_type
            params = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "wait_for_completion": st.sampled_from(["false", "false", "true", "maybe"]),
                        "token": st.sampled_from([right, other_token, "x"]),
                    },
                )
            )
            return Case("POST", endpoint["path"], params, headers, body)
        pick = draw(st.integers(0, 4))
        if pick < 3:
            execution = executions[min(pick, len(executions) - 1)]
        else:
            execution = unknown if pick == 3 else "not-a-uuid"
        params = draw(
            st.fixed_dictionaries(
                {}, optional={"token": st.sampled_from([right, other_token, "x"])}
            )
        )
        return Case("GET", f"{endpoint['path']}/executions/{execution}", params, headers, b"")

    return case()


def opens(case: Case, right: str) -> bool:
    """Whether the case shows the right token: its Authorization header; for a GET without
    one, its `?token=` (the gateway's rule, restated)."""
    header = case.headers.get("Authorization", "").strip()
    if header:
        return token_is_right(header, right)
    return case.method == "GET" and case.params.get("token") == right
