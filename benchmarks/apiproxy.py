"""A counting reverse proxy in front of a Prefect server, for counting API calls per execution.

For: `benchmarks/latency.py`'s API-call count. Each client gets its own URL prefix, so every
request and websocket message is attributed to who sent it:
    http://127.0.0.1:PORT/<role>/api/...   ->   <upstream>/api/...
Give a process PREFECT_API_URL=http://127.0.0.1:PORT/<role>/api. REST calls and the websockets
Prefect's clients open (`/api/events/in` to emit events, `/api/events/out` to subscribe) are
forwarded; each websocket message is counted (events sent in are counted by event name).
Tests also use it to inject faults: `refuse(method, endpoint)` may answer a call with an HTTP
status instead of forwarding it (recorded like any call), and `delay(method, endpoint)` may hold
a call for some seconds before forwarding it (a slow or stalled server).
Not for: anything but measurement and fault injection (no streaming bodies, no TLS, one upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HOP_BY_HOP = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
}
_NOT_FORWARDED_BACK = {"content-encoding", "content-length", "transfer-encoding", "connection"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def path_template(path: str) -> str:
    """`/api/flow_runs/<uuid>/set_state` -> `/flow_runs/{id}/set_state` (names too)."""
    path = "/" + path.strip("/")
    path = path.removeprefix("/api")
    path = _UUID.sub("{id}", path)
    path = re.sub(r"^/work_pools/[^/]+", "/work_pools/{pool}", path)
    path = re.sub(r"^/variables/name/[^/]+", "/variables/name/{name}", path)
    path = re.sub(r"^/deployments/name/[^/]+/[^/]+", "/deployments/name/{flow}/{name}", path)
    path = re.sub(r"^/flows/name/[^/]+", "/flows/name/{name}", path)
    path = re.sub(r"^/block_documents/name/[^/]+", "/block_documents/name/{name}", path)
    return path or "/"


@dataclass
class Call:
    """One REST request, or one websocket message (method WS> sent to the server, WS< received)."""

    role: str
    method: str
    endpoint: str
    status: int
    started: float  # time.monotonic()
    duration_s: float
    detail: str = ""  # the event name of an event sent over /events/in


class CountingProxy:
    """Forwards to `upstream` (http://host:port) and records every call; runs in its own thread."""

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        refuse: Callable[[str, str], int | None] | None = None,
        delay: Callable[[str, str], float] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.refuse = refuse
        self.delay = delay
        self.host = host
        self.port = port
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        app = Starlette(
            routes=[
                WebSocketRoute("/{role}/{path:path}", self._websocket),
                Route("/{role}/{path:path}", self._http, methods=_METHODS),
            ]
        )
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                ws="websockets-sansio",
                lifespan="off",
                ws_max_size=64 * 1024 * 1024,
            )
        )
        self._thread: threading.Thread | None = None

    def url(self, role: str) -> str:
        """The PREFECT_API_URL to give a client whose calls count as `role`."""
        return f"http://{self.host}:{self.port}/{role}/api"

    def start(self, timeout_s: float = 20.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="api-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the counting proxy did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    # ---- forwarding -----------------------------------------------------------------------

    async def _http(self, request: Request) -> Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200))
        role = request.path_params["role"]
        path = request.path_params["path"]
        url = f"{self.upstream}/{path}"
        if request.url.query:
            url += "?" + request.url.query
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        body = await request.body()
        started = time.monotonic()
        held_s = self.delay(request.method, path_template(path)) if self.delay else 0.0
        if held_s > 0:
            await asyncio.sleep(held_s)
        refused = self.refuse(request.method, path_template(path)) if self.refuse else None
        if refused is not None:
            self._record(Call(role, request.method, path_template(path), refused, started, 0.0))
            return Response(
                json.dumps({"detail": "refused by the test proxy"}),
                status_code=refused,
                media_type="application/json",
            )
        try:
            upstream = await self._client.request(
                request.method, url, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            self._record(
                Call(
                    role,
                    request.method,
                    path_template(path),
                    502,
                    started,
                    time.monotonic() - started,
                )
            )
            return Response(f"proxy: {exc}", status_code=502)
        self._record(
            Call(
                role,
                request.method,
                path_template(path),
                upstream.status_code,
                started,
                time.monotonic() - started,
            )
        )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED_BACK
            },
        )

    async def _websocket(self, websocket: WebSocket) -> None:
        role = websocket.path_params["role"]
        path = websocket.path_params["path"]
        endpoint = path_template(path)
        url = self.upstream.replace("http", "ws", 1) + "/" + path
        if websocket.url.query:
            url += "?" + websocket.url.query
        subprotocols = websocket.scope.get("subprotocols") or None
        started = time.monotonic()
        try:
            upstream = await ws_connect(url, subprotocols=subprotocols, max_size=None)
        except Exception:
            self._record(Call(role, "WS-CONNECT", endpoint, 502, started, 0.0))
            await websocket.close(code=1011)
            return
        self._record(Call(role, "WS-CONNECT", endpoint, 101, started, time.monotonic() - started))
        await websocket.accept(subprotocol=upstream.subprotocol)

        async def client_to_server() -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                self._record(
                    Call(role, "WS>", endpoint, 0, time.monotonic(), 0.0, _event_name(data))
                )
                await upstream.send(data)

        async def server_to_client() -> None:
            async for data in upstream:
                self._record(Call(role, "WS<", endpoint, 0, time.monotonic(), 0.0))
                if isinstance(data, str):
                    await websocket.send_text(data)
                else:
                    await websocket.send_bytes(data)

        tasks = [
            asyncio.create_task(client_to_server()),
            asyncio.create_task(server_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError, WebSocketDisconnect):
                    await task
            with contextlib.suppress(Exception):
                await upstream.close()
            with contextlib.suppress(Exception):
                await websocket.close()


def _event_name(data: str | bytes) -> str:
    """The event name of a message sent to /events/in (empty for other messages)."""
    try:
        message = json.loads(data)
    except (ValueError, TypeError):
        return ""
    if isinstance(message, dict) and isinstance(message.get("event"), str):
        return message["event"]
    if isinstance(message, dict) and message.get("type") == "filter":
        names = (message.get("filter") or {}).get("event") or {}
        wanted = [*(names.get("name") or []), *(f"{p}*" for p in names.get("prefix") or [])]
        return f"<filter {', '.join(wanted)}>" if wanted else "<filter>"
    if isinstance(message, dict) and isinstance(message.get("type"), str):
        return f"<{message['type']}>"
    return ""


def calls_as_dicts(calls: list[Call]) -> list[dict[str, object]]:
    return [asdict(call) for call in calls]
