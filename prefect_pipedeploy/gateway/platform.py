"""The reference platform's client (`craft-ai-sdk`) against the gateway: the surface it calls.

For: `add_platform_routes(app, pools)`, the routes `CraftAiSdk(sdk_token=...,
environment_url=<gateway>, control_url=<gateway>)` uses for its endpoint verbs, and what they
need:
- `POST /api/v1/auth/refresh` {"refresh_token": <SDK token>} -> {"access_token": <JWT>}: an SDK
  token (`pipedeploy sdk-token create`, `prefect_api.sdk_tokens`) for an HS256 token with `iat`
  and `exp` (`gateway_access_token_ttl_s`) signed with the server's key. Wrong SDK tokens count
  against the client like wrong endpoint tokens (429 past the limit).
- with `Authorization: Bearer <access token>`: `GET /api/v1/deployments`,
  `GET /api/v1/deployments/{name}` (`?wait_for_completion=true` waits up to
  `DEPLOYMENT_WAIT_S` for a final status: the client asks again at once, in a loop),
  `GET /api/v1/deployments/{name}/executions/latest`, and
  `POST /api/v1/endpoints/{name}/generate-new-token` (form field `endpoint_token`: the token to
  set; none: a new one). Scoped to these: an access token opens no endpoint, and an endpoint
  token is no access token.
- `GET /endpoints/v1/{path}/executions/{id}?token=`: the execution's result, every output as
  {"value": ...} (the client unwraps it, so an output that is itself a dict with "value" or
  "url" keys is read right) and every stored output as {"url": ...}, downloaded from
  `.../outputs/{name}?token=`. While it runs: a 303 to the same route asking to wait twice as
  long (`wait=`), up to `V1_MAX_WAIT_S`, so the client's 30 redirects last hours, not minutes.
- a call from this client (`bodies.from_platform_client`: its `craft-ai-client` header) is
  answered without waiting (the client waits on the route above, and never sends
  `?wait_for_completion=false`), and its multipart text fields are JSON-decoded when they are
  JSON strings (`bodies.json_string_fields`: it JSON-encodes every non-file value, strings
  included).
Not for: the endpoint calls themselves (`service`), SDK token storage (`prefect_api.sdk_tokens`).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, quote
from uuid import UUID

import jwt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from prefect_pipedeploy.exceptions import DeploymentNotFound, PipeDeployError
from prefect_pipedeploy.gateway.answers import GatewayError, public_message
from prefect_pipedeploy.gateway.service import Gateway, _client_address
from prefect_pipedeploy.prefect_api.records import read_outputs, read_stored_outputs
from prefect_pipedeploy.prefect_api.sdk_tokens import access_token_key, sdk_token_named
from prefect_pipedeploy.sdk.compat import latest_execution_id
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.status import execution_status, settled

#: How long `GET /api/v1/deployments/{name}?wait_for_completion=true` waits for a final status.
DEPLOYMENT_WAIT_S = 10.0
FINAL_STATUSES = frozenset({"up", "standby", "creation_failed", "disabled"})
#: Clock difference an access token's `iat` and `exp` are checked with (gateways of one server
#: on different machines).
ACCESS_TOKEN_LEEWAY_S = 2
#: The longest a result request waits before its 303 (each redirect waits twice as long).
V1_MAX_WAIT_S = 600.0
_SCOPE = "pipedeploy-sdk"
_LIST_KEYS = ("name", "pipeline_name", "execution_rule", "mode", "is_enabled", "created_at")


#: The largest body the platform's routes read (a token, a form with one field).
SMALL_BODY_BYTES = 64 * 1024


async def _small_fields(request: Request) -> dict[str, Any]:
    """The fields of a small JSON object or urlencoded form body ({} for none); 413 past
    `SMALL_BODY_BYTES`, read no further; 400 for a body that is neither."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > SMALL_BODY_BYTES:
            raise GatewayError(413, f"the body is over {SMALL_BODY_BYTES // 1024} KiB; send less")
    if not body.strip():
        return {}
    if "json" in request.headers.get("content-type", ""):
        try:
            fields = json.loads(body)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise GatewayError(400, 'the body is not a JSON object; send {"name": value, ...}')
        return fields
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise GatewayError(
            400, "the body is neither JSON nor a form; send JSON (Content-Type: application/json)"
        ) from None
    return dict(pairs)


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, headers={"WWW-Authenticate": "Bearer"})


class PlatformAccess:
    """Access tokens for SDK tokens, and the check of the ones shown back."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._key: str | None = None

    async def key(self) -> str:
        if self._key is None:
            self._key = await access_token_key(self.gateway.client)
        return self._key

    async def refresh(self, request: Request) -> dict[str, str]:
        client = _client_address(request)
        self.gateway.refuse_blocked(client)
        token = (await _small_fields(request)).get("refresh_token")
        name = await sdk_token_named(self.gateway.client, token if isinstance(token, str) else None)
        if name is None:
            self.gateway.limiter.record(client, time.monotonic())
            raise _unauthorized(
                'the SDK token is wrong or revoked; send {"refresh_token": <SDK token>} with a '
                "token made by `pipedeploy sdk-token create NAME`"
            )
        now = int(time.time())
        claims = {
            "sub": name,
            "scope": _SCOPE,
            "iat": now,
            "exp": now + get_settings().gateway_access_token_ttl_s,
        }
        return {"access_token": jwt.encode(claims, await self.key(), algorithm="HS256")}

    async def check(self, request: Request) -> str:
        """The SDK token name of a request's valid access token; 401 otherwise."""
        client = _client_address(request)
        self.gateway.refuse_blocked(client)
        scheme, _, token = (request.headers.get("authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized(
                "this route needs an access token: send 'Authorization: Bearer <access token>' "
                "(POST /api/v1/auth/refresh gives one for an SDK token)"
            )
        try:
            claims = jwt.decode(
                token.strip(),
                await self.key(),
                algorithms=["HS256"],
                options={"require": ["exp", "iat", "sub"]},
                leeway=ACCESS_TOKEN_LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized(
                "the access token has expired; get a new one (POST /api/v1/auth/refresh)"
            ) from None
        except jwt.InvalidTokenError:
            self.gateway.limiter.record(client, time.monotonic())
            raise _unauthorized(
                "the access token is not valid here; get one from POST /api/v1/auth/refresh with "
                "an SDK token (an endpoint token is not one)"
            ) from None
        if claims.get("scope") != _SCOPE:
            raise _unauthorized("the access token is not for this API")
        return str(claims["sub"])


def _sdk(gateway: Gateway) -> Any:
    from prefect_pipedeploy.sdk.client import PipeDeploy

    return PipeDeploy(api_url=str(gateway.client.api_url).rstrip("/"))


async def _deployment_view(gateway: Gateway, name: str) -> dict[str, Any]:
    """The deployment `name` of the gateway's pools, as the SDK shows it (no token; its id as
    `deployment_id`: the platform's client drops `id`)."""
    try:
        view: dict[str, Any] = await _sdk(gateway).aget_deployment(name)
    except DeploymentNotFound:
        view = {}
    if view.get("work_pool_name") not in gateway.pools:
        raise GatewayError(404, f"no deployment named {name!r} is served by this gateway")
    view.pop("endpoint_token", None)
    view["deployment_id"] = view.get("id")
    return view


async def _wait_for_status(gateway: Gateway, name: str, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    view = await _deployment_view(gateway, name)
    while view.get("status") not in FINAL_STATUSES and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        view = await _deployment_view(gateway, name)
    return view


def _result_location(request: Request, path: str, execution_id: str, wait_s: float) -> str:
    token = request.query_params.get("token")
    query = f"wait={wait_s:g}" + (f"&token={quote(token, safe='')}" if token else "")
    return f"/endpoints/v1/{quote(path)}/executions/{execution_id}?{query}"


async def _result(gateway: Gateway, request: Request, path: str, execution_id: str) -> Response:
    endpoint, _, _ = await gateway.authorized_endpoint(
        request, path, time.monotonic(), allow_query=True
    )
    run = await gateway.answers.read_run(endpoint, execution_id)
    base_wait = get_settings().gateway_wait_s
    try:
        asked = float(request.query_params.get("wait", base_wait))
    except ValueError:
        asked = base_wait
    wait_s = min(max(asked, base_wait), V1_MAX_WAIT_S)
    max_retries = endpoint.spec.max_retries
    if not settled(run, max_retries, datetime.now(timezone.utc)):
        latest, done = await gateway.watcher.wait(run.id, max_retries, wait_s)
        if not done:
            location = _result_location(request, path, execution_id, min(2 * wait_s, V1_MAX_WAIT_S))
            return JSONResponse(
                {
                    "message": "the execution is still running; follow Location to wait longer",
                    "execution_id": str(run.id),
                    "status": execution_status(latest or run),
                },
                status_code=303,
                headers={"Location": location, "X-Execution-Id": str(run.id)},
            )
        assert latest is not None
        run = latest
    if run.state is None or run.state.type.value != "COMPLETED":
        return await gateway.answers.final_answer(request, run)  # 500 with the reason
    outputs = await read_outputs(gateway.client, run.id) or {}
    stored = await read_stored_outputs(gateway.client, run.id) or {}
    base = str(request.base_url).rstrip("/")
    result: dict[str, Any] = {name: {"value": value} for name, value in outputs.items()}
    for name in stored:
        url = f"{base}/endpoints/v1/{quote(path)}/executions/{run.id}/outputs/{quote(name)}"
        result[name] = {"url": url}
    return JSONResponse(
        {"execution_id": str(run.id), "status": execution_status(run), "outputs": result},
        headers={"X-Execution-Id": str(run.id)},
    )


async def _output_file(
    gateway: Gateway, request: Request, path: str, execution_id: str, name: str
) -> Response:
    endpoint, _, _ = await gateway.authorized_endpoint(
        request, path, time.monotonic(), allow_query=True
    )
    run = await gateway.answers.read_run(endpoint, execution_id)
    key = (await read_stored_outputs(gateway.client, run.id) or {}).get(name)
    if key is None:
        raise GatewayError(404, f"execution {execution_id!r} stored no output named {name!r}")
    return await gateway.answers.file_answer(run.id, name, key)


def add_platform_routes(app: FastAPI, gateway_of: Any) -> None:
    """Add the platform client's routes to `app`; `gateway_of(request)` is its `Gateway`.
    Call before the gateway's own routes: `/endpoints/v1/...` must win over
    `/endpoints/{path}/...`."""

    def access(request: Request) -> PlatformAccess:
        gateway = gateway_of(request)
        found = getattr(gateway, "platform_access", None)
        if found is None:
            found = gateway.platform_access = PlatformAccess(gateway)
        return found  # type: ignore[no-any-return]

    tags: list[str | Enum] = ["reference platform's client"]

    @app.post("/api/v1/auth/refresh", tags=tags, summary="An access token for an SDK token")
    async def refresh(request: Request) -> dict[str, str]:
        return await access(request).refresh(request)

    @app.get("/api/v1/deployments", tags=tags, summary="The deployments this gateway serves")
    async def list_deployments(request: Request) -> list[dict[str, Any]]:
        await access(request).check(request)
        gateway = gateway_of(request)
        views = await _sdk(gateway).alist_deployments()
        return [
            {key: view.get(key) for key in _LIST_KEYS}
            for view in views
            if view.get("work_pool_name") in gateway.pools
        ]

    @app.get("/api/v1/deployments/{name}", tags=tags, summary="One deployment")
    async def get_deployment(request: Request, name: str) -> dict[str, Any]:
        await access(request).check(request)
        wait = request.query_params.get("wait_for_completion", "").lower() == "true"
        gateway = gateway_of(request)
        if wait:
            return await _wait_for_status(gateway, name, DEPLOYMENT_WAIT_S)
        return await _deployment_view(gateway, name)

    @app.get(
        "/api/v1/deployments/{name}/executions/latest",
        tags=tags,
        summary="The deployment's latest execution",
    )
    async def latest_execution(request: Request, name: str) -> Response:
        await access(request).check(request)
        gateway = gateway_of(request)
        view = await _deployment_view(gateway, name)  # 404 unless served here
        latest = await latest_execution_id(gateway.client, UUID(view["deployment_id"]))
        if latest is None:
            return Response(status_code=204)
        return JSONResponse({"execution_id": latest})

    @app.post(
        "/api/v1/endpoints/{name}/generate-new-token",
        tags=tags,
        summary="Rotate an endpoint's token",
    )
    async def rotate(request: Request, name: str) -> dict[str, str]:
        await access(request).check(request)
        gateway = gateway_of(request)
        await _deployment_view(gateway, name)  # 404 unless served here
        given = (await _small_fields(request)).get("endpoint_token")
        sdk = _sdk(gateway)
        try:
            if isinstance(given, str) and given:
                rotated = await sdk.agenerate_new_endpoint_token(name, endpoint_token=given)
            else:
                rotated = await sdk.agenerate_new_endpoint_token(name)
        except PipeDeployError as exc:
            raise GatewayError(400, public_message(str(exc))) from None
        gateway.forget_endpoints()  # the new token works at once here
        return {"endpoint_token": rotated["endpoint_token"]}

    @app.get(
        "/endpoints/v1/{endpoint_url_path:path}/executions/{execution_id}/outputs/{name}",
        tags=tags,
        summary="A stored output of an execution (the token as ?token=)",
    )
    async def output_file(
        request: Request, endpoint_url_path: str, execution_id: str, name: str
    ) -> Response:
        return await _output_file(
            gateway_of(request), request, endpoint_url_path.strip("/"), execution_id, name
        )

    @app.get(
        "/endpoints/v1/{endpoint_url_path:path}/executions/{execution_id}",
        tags=tags,
        summary="An execution's result, outputs as {value} or {url} (the token as ?token=)",
    )
    async def result(request: Request, endpoint_url_path: str, execution_id: str) -> Response:
        return await _result(
            gateway_of(request), request, endpoint_url_path.strip("/"), execution_id
        )
