"""The gateway's routes for the reference platform's client (`gateway.platform`) in-process,
through httpx's ASGI transport, against the session's real Prefect server: the bodies they
read (small JSON or form bodies only, refused past 64 KiB without reading on), and the access
tokens they give and check. The client itself, end to end: tests/e2e/test_platform_client.py."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from prefect.client.orchestration import get_client

from prefect_pipedeploy.gateway import create_app
from prefect_pipedeploy.gateway.platform import SMALL_BODY_BYTES
from prefect_pipedeploy.gateway.service import Gateway
from prefect_pipedeploy.prefect_api.sdk_tokens import create_sdk_token, revoke_sdk_token

pytestmark = pytest.mark.anyio


@pytest.fixture
async def platform(prefect_api: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """The gateway app of an unused pool, and a fresh SDK token."""
    async with get_client() as client:
        name = f"asgi-{uuid.uuid4().hex[:8]}"
        token = await create_sdk_token(client, name)
        gateway = Gateway([f"pool-{uuid.uuid4().hex[:8]}"], client)
        transport = httpx.ASGITransport(app=create_app(gateway.pools, gateway=gateway))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                yield http, token
        finally:
            await gateway.close()
            await revoke_sdk_token(client, name)


@pytest.mark.parametrize(
    ("kwargs", "status", "phrase"),
    [
        ({"content": b"x" * (SMALL_BODY_BYTES + 1)}, 413, "over 64 KiB"),
        ({"json": ["not", "an", "object"]}, 400, "not a JSON object"),
        ({"content": b"\xff\xfe", "headers": {"content-type": "text/plain"}}, 400, "neither"),
        ({"json": {"refresh_token": "pds_wrong"}}, 401, "wrong or revoked"),
        ({"data": {"refresh_token": "pdt_an-endpoint-token"}}, 401, "wrong or revoked"),
        ({}, 401, "wrong or revoked"),
    ],
)
async def test_refresh_reads_only_small_bodies_and_refuses_wrong_tokens(
    platform: tuple[httpx.AsyncClient, str], kwargs: dict[str, Any], status: int, phrase: str
) -> None:
    http, _ = platform
    answer = await http.post("/api/v1/auth/refresh", **kwargs)
    assert answer.status_code == status, answer.text
    assert phrase in answer.json()["message"]


@pytest.mark.parametrize("as_form", [False, True])
async def test_an_sdk_token_gets_an_access_token_that_opens_the_management_routes(
    platform: tuple[httpx.AsyncClient, str], as_form: bool
) -> None:
    http, token = platform
    body = {"data": {"refresh_token": token}} if as_form else {"json": {"refresh_token": token}}
    answer = await http.post("/api/v1/auth/refresh", **body)
    assert answer.status_code == 200, answer.text
    access = answer.json()["access_token"]
    claims = jwt.decode(access, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 900 and claims["sub"].startswith("asgi-")
    bearer = {"Authorization": f"Bearer {access}"}
    assert (await http.get("/api/v1/deployments", headers=bearer)).json() == []  # none here
    missing = await http.get("/api/v1/deployments/nothing-here", headers=bearer)
    assert missing.status_code == 404 and "served by this gateway" in missing.json()["message"]
    rotate = await http.post("/api/v1/endpoints/nothing-here/generate-new-token", headers=bearer)
    assert rotate.status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer not-a-jwt", "EndpointToken pdt_x", "Bearer " + "e30." * 3],
)
async def test_management_routes_need_a_valid_access_token(
    platform: tuple[httpx.AsyncClient, str], authorization: str | None
) -> None:
    http, _ = platform
    headers = {"Authorization": authorization} if authorization else {}
    answer = await http.get("/api/v1/deployments", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "access token" in answer.json()["message"]
