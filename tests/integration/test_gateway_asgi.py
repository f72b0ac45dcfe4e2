"""The gateway app in-process, through httpx's ASGI transport: its error answers are JSON
messages without internals, and its OpenAPI document lists each endpoint. The gateway's service
is a stand-in that fails on every call; no Prefect server, no processes.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from prefect_pipedeploy.gateway import create_app
from prefect_pipedeploy.gateway.answers import INTERNAL_ERROR, GatewayError
from prefect_pipedeploy.gateway.endpoints import Endpoint
from tests.support.endpoints import ENDPOINT


class ExplodingGateway:
    """Stands in for `Gateway`: every call fails with an error naming internals."""

    pools = ["p"]

    async def call(self, request: Any, path: str, wait: bool) -> Any:
        raise RuntimeError('boom in File "/srv/app/secret.py", line 3')

    async def results(self, request: Any, path: str, execution_id: str) -> Any:
        raise GatewayError(404, "no such execution")

    async def endpoints(self, not_before: float | None = None) -> dict[str, Endpoint]:
        return {ENDPOINT.path: ENDPOINT}


@pytest.fixture
def asgi_client() -> httpx.Client:
    app = create_app(["p"], gateway=ExplodingGateway())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")  # type: ignore[return-value]


async def _get(client: Any, method: str, url: str, **kwargs: Any) -> httpx.Response:
    response: httpx.Response = await client.request(method, url, **kwargs)
    return response


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "url", "status", "phrase"),
    [
        ("POST", "/endpoints/team/score", 500, INTERNAL_ERROR),
        ("GET", "/endpoints/team/score/executions/x", 404, "no such execution"),
        ("GET", "/nowhere", 404, "no such page"),
        ("GET", "/endpoints/team/score", 405, "is not allowed here"),
        ("POST", "/endpoints/team/score?wait_for_completion=perhaps", 400, "wait_for_completion"),
    ],
)
async def test_error_answers_are_json_messages(
    asgi_client: Any, method: str, url: str, status: int, phrase: str
) -> None:
    response = await _get(asgi_client, method, url, json={})
    assert response.status_code == status
    body = response.json()
    assert phrase in body["message"]
    assert "Traceback" not in response.text and ".py" not in response.text


@pytest.mark.anyio
async def test_openapi_lists_each_endpoint(asgi_client: Any) -> None:
    response = await _get(asgi_client, "GET", "/openapi.json")
    document = response.json()
    assert "/endpoints/team/score" in document["paths"]
    assert "/health" in document["paths"]
    assert document["components"]["securitySchemes"]["EndpointToken"]["name"] == "Authorization"
    docs = await _get(asgi_client, "GET", "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
