"""JSON sent as application/x-www-form-urlencoded (what `curl -d '{...}'` sends): a 400 that
says so, without the body's text. Before: the whole JSON became one field name, echoed back in
the 400 as "not an input of this endpoint", secret values and all (found by the fuzz pass of
tests/reliability/test_gateway_hostile.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from prefect_pipedeploy.gateway.answers import GatewayError
from prefect_pipedeploy.gateway.bodies import parse_body

pytestmark = pytest.mark.anyio

URLENCODED = "application/x-www-form-urlencoded"


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "x", "api_key": "s3cret"}',
        b'  \n[{"api_key": "s3cret"}]',
        b'{"api_key": "s3cret&x=y"}',
    ],
)
async def test_json_sent_as_a_form_is_refused_without_its_text(body: bytes) -> None:
    with pytest.raises(GatewayError) as refused:
        await parse_body(URLENCODED, body)
    assert refused.value.status_code == 400
    assert "looks like JSON" in refused.value.message
    assert "Content-Type: application/json" in refused.value.message
    assert "s3cret" not in refused.value.message


async def test_streamed_json_sent_as_a_form_is_refused_at_its_first_bytes() -> None:
    with pytest.raises(GatewayError, match="looks like JSON"):
        await parse_body(URLENCODED, _chunks(b"", b"  ", b'{"a": 1}'))


@pytest.mark.parametrize(
    ("body", "items"),
    [
        (b"%7B=1", [("{", "1")]),  # a form encodes `{`
        (b"a={1}&b=[2]", [("a", "{1}"), ("b", "[2]")]),
        (b"", []),
    ],
)
async def test_forms_that_hold_braces_are_still_forms(
    body: bytes, items: list[tuple[str, str]]
) -> None:
    assert await parse_body(URLENCODED, body) == (items, True)
