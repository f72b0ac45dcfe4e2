"""The reference platform's client JSON-encodes every non-file value of a multipart body,
strings included: `gateway.bodies.json_string_fields` decodes the fields that are JSON strings
(only for that client's requests; `from_platform_client`) and leaves every other field as it
was, for the endpoint's own checks."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from prefect_pipedeploy.gateway.bodies import from_platform_client, json_string_fields

FILE = object()  # an uploaded file part: never touched


@pytest.mark.parametrize(
    ("value", "seen"),
    [
        ('"mine"', "mine"),
        ('"say \\"hi\\"\\n"', 'say "hi"\n'),
        ('""', ""),
        ('"é"', "é"),
        ("mine", "mine"),  # not JSON: as it is
        ("42", "42"),  # a number: the endpoint's checks read it as before
        ('{"a": 1}', '{"a": 1}'),
        ('["x"]', '["x"]'),
        ('"unterminated', '"unterminated'),
        ('"a" "b"', '"a" "b"'),  # not one JSON string
        ('"', '"'),
        (FILE, FILE),
    ],
)
def test_only_json_strings_are_decoded(value: Any, seen: Any) -> None:
    assert json_string_fields([("field", value)]) == [("field", seen)]


@pytest.mark.parametrize(
    ("headers", "platform"),
    [
        ([(b"craft-ai-client", b"craft-ai-sdk@0.74.7")], True),
        ([(b"user-agent", b"curl/8")], False),
        ([], False),
    ],
)
def test_the_platform_client_is_known_by_its_header(
    headers: list[tuple[bytes, bytes]], platform: bool
) -> None:
    request = Request({"type": "http", "headers": headers, "method": "POST", "path": "/"})
    assert from_platform_client(request) is platform
