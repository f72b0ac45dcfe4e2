"""The stack's Prefect server entry (`serverproc`): where its health check is, and the second
`gc.freeze()` once it answers. That the stack's server runs through it: every test's server
(`stack.start_prefect_server`)."""

from __future__ import annotations

import gc
import http.server
import threading
from collections.abc import Iterator

import pytest

from prefect_pipedeploy.serverproc import freeze_once_serving, health_url
from prefect_pipedeploy.stack import free_port


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (["x", "server", "start"], "http://127.0.0.1:4200/api/health"),  # Prefect's defaults
        (["x", "server", "start", "--port", "5123"], "http://127.0.0.1:5123/api/health"),
        (
            ["x", "server", "start", "--host", "0.0.0.0", "--port", "81"],
            "http://127.0.0.1:81/api/health",
        ),
        (
            ["x", "server", "start", "--host", "10.1.2.3", "--port", "81"],
            "http://10.1.2.3:81/api/health",
        ),
        (["x", "server", "start", "--port"], "http://127.0.0.1:4200/api/health"),  # no value
    ],
)
def test_health_url(argv: list[str], url: str) -> None:
    assert health_url(argv) == url


@pytest.fixture
def answering() -> Iterator[str]:
    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/api/health"
    finally:
        server.shutdown()
        server.server_close()


def test_freezes_once_the_server_answers(answering: str) -> None:
    gc.unfreeze()
    try:
        assert freeze_once_serving(answering, wait_s=10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_does_not_freeze_when_nothing_answers() -> None:
    gc.unfreeze()
    assert not freeze_once_serving(f"http://127.0.0.1:{free_port()}/api/health", wait_s=1)
    assert gc.get_freeze_count() == 0
