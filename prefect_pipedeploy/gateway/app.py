"""The gateway as an ASGI app, and `serve` (uvicorn), which `pipedeploy gateway` runs.

For: routes, error handlers (every error answers {"message": ...}, never a traceback), the app's
lifespan (its Prefect client, and the sweep of expired uploads while it serves). Not for: the work behind a route (`service`).

    pipedeploy gateway --pool pipedeploy --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prefect.logging import get_logger
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from prefect_pipedeploy._compat import fail_fast_client
from prefect_pipedeploy.aio import cancel_and_wait
from prefect_pipedeploy.exceptions import (
    ServerUnavailable,
)
from prefect_pipedeploy.gateway.answers import INTERNAL_ERROR, WAITING_RETRY_AFTER_S, GatewayError
from prefect_pipedeploy.gateway.openapi import CALL_RESPONSES, RESULT_RESPONSES, openapi_document
from prefect_pipedeploy.gateway.platform import add_platform_routes
from prefect_pipedeploy.gateway.service import Gateway

logger = get_logger("prefect_pipedeploy.gateway")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answers {"message": ...}: never a traceback."""

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> Response:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        messages = {
            404: f"no such page: {request.url.path}; endpoints are at POST /endpoints/<path>",
            405: f"{request.method} is not allowed here; call an endpoint with POST "
            "/endpoints/<path> and fetch a result with GET /endpoints/<path>/executions/<id>",
        }
        message = messages.get(exc.status_code) or str(exc.detail)
        return JSONResponse(
            {"message": message}, status_code=exc.status_code, headers=dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"field": str(error["loc"][-1]) if error["loc"] else "", "message": error["msg"]}
            for error in exc.errors()
        ]
        message = "; ".join(f"{e['field']!r} {e['message']}" for e in errors)
        return JSONResponse(
            {"message": f"the request is invalid: {message}", "errors": errors}, 400
        )

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:
        return JSONResponse({"message": "the client went away before sending its body"}, 400)

    @app.exception_handler(httpx.TransportError)
    async def api_away(request: Request, exc: httpx.TransportError) -> Response:
        logger.warning("The Prefect API did not answer: %r", exc, extra={"action": "api_away"})
        return JSONResponse(
            {"message": "the Prefect API did not answer; try again shortly"},
            status_code=503,
            headers={"Retry-After": str(WAITING_RETRY_AFTER_S)},
        )

    @app.exception_handler(httpx.HTTPStatusError)
    async def api_refused(request: Request, exc: httpx.HTTPStatusError) -> Response:
        logger.error("The Prefect API refused a request: %s", exc, extra={"action": "api_refused"})
        return JSONResponse(
            {"message": "the Prefect API refused a request; see the gateway log"}, 502
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette re-raises the exception after this answer, so uvicorn logs its traceback.
        logger.error(
            "Internal error on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            extra={"action": "internal_error"},
        )
        return JSONResponse({"message": INTERNAL_ERROR}, status_code=500)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect-pipedeploy")
    except PackageNotFoundError:
        return "0"


def create_app(pools: Sequence[str], gateway: Gateway | None = None) -> FastAPI:
    """The gateway as an ASGI app serving the endpoint deployments of `pools`.

    It opens its Prefect client (PREFECT_API_URL) when the app starts; pass `gateway` to use
    one made elsewhere (tests).
    """
    pools = list(pools)
    if not pools:
        raise ValueError("the gateway needs at least one work pool to serve")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if gateway is not None:
            app.state.gateway = gateway
            yield
            return
        # a server that is away is answered 503 at once, not after a minute of retries
        async with fail_fast_client() as client:
            app.state.gateway = Gateway(pools, client)
            logger.info(
                "Gateway serving the endpoint deployments of work pools %s",
                ", ".join(pools),
                extra={"action": "gateway_started"},
            )
            sweeper = asyncio.create_task(app.state.gateway.keep_sweeping_uploads())
            try:
                yield
            finally:
                try:
                    await cancel_and_wait(sweeper)
                finally:
                    await app.state.gateway.close()

    app = FastAPI(
        title="prefect-pipedeploy gateway",
        version=_version(),
        description=(
            "Token-protected HTTP endpoints of pipeline deployments. Authenticate with "
            "'Authorization: EndpointToken <token>'."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    if gateway is not None:
        app.state.gateway = gateway
    _install_error_handlers(app)

    @app.get("/health", tags=["gateway"], summary="Whether the gateway and its Prefect API answer")
    async def health(request: Request) -> dict[str, Any]:
        endpoints = await _gateway(request).endpoints()
        return {"status": "ok", "pools": pools, "endpoints": sorted(endpoints)}

    # first: `/endpoints/v1/...` must win over `/endpoints/{path}/...`
    add_platform_routes(app, _gateway)

    @app.post(
        "/endpoints/{endpoint_url_path:path}",
        tags=["endpoints"],
        summary="Call an endpoint (any path; each endpoint is also described on its own)",
        responses=CALL_RESPONSES,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"type": "object"}},
                    "multipart/form-data": {"schema": {"type": "object"}},
                }
            },
            "security": [{"EndpointToken": []}],
        },
    )
    async def call_endpoint(
        endpoint_url_path: str,
        request: Request,
        wait_for_completion: bool = Query(
            True, description="false: answer 202 as soon as the execution is created."
        ),
    ) -> Response:
        return await _gateway(request).call(
            request, endpoint_url_path.strip("/"), wait_for_completion
        )

    @app.get(
        "/endpoints/{endpoint_url_path:path}/executions/{execution_id}",
        tags=["endpoints"],
        summary="Wait for an execution's result (long-poll)",
        responses=RESULT_RESPONSES,
        openapi_extra={"security": [{"EndpointToken": []}]},
    )
    async def execution_result(
        endpoint_url_path: str,
        execution_id: str,
        request: Request,
        token: str | None = Query(None, description="The endpoint token, instead of the header."),
    ) -> Response:
        del token  # read from the request, with the header first
        return await _gateway(request).results(request, endpoint_url_path.strip("/"), execution_id)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> JSONResponse:
        endpoints = await _gateway(request).endpoints()
        return JSONResponse(openapi_document(app, endpoints))

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title}: docs")

    return app


def serve(pools: Sequence[str], host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the gateway with uvicorn until SIGINT/SIGTERM."""
    import uvicorn
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ServerUnavailable(
            "the gateway needs a Prefect API: set PREFECT_API_URL (`pipedeploy up` does)"
        )
    config = uvicorn.Config(
        create_app(pools),
        host=host,
        port=port,
        log_level="info",
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    uvicorn.Server(config).run()
