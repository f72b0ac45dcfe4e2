"""The CLI's one error boundary, on the real app: one line `error: ...`, exit 1, no traceback.

Here against an unreachable Prefect API (no server needed); a missing deployment against the
real server is in tests/integration/test_rules_cli.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from prefect_pipedeploy.cli import app
from prefect_pipedeploy.cli.app import error_message
from prefect_pipedeploy.exceptions import DeploymentNotFound


@pytest.fixture(scope="module")
def unreachable_api() -> Iterator[str]:
    """PREFECT_API_URL pointing at a 127.0.0.1 port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


@pytest.mark.parametrize(
    "command",
    [
        ["deployment", "get", "score"],
        ["executions", "ls"],
        ["endpoint", "token", "score"],  # it used to catch errors itself
        ["pool", "ram-cap"],
    ],
)
def test_an_unreachable_api_says_which_url_and_how_to_start_one(
    unreachable_api: str, command: list[str]
) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot reach the Prefect API at {unreachable_api} ")
    assert "`pipedeploy up`" in lines[0] and "PREFECT_API_URL" in lines[0]
    assert "Traceback" not in result.output


def test_usage_errors_stay_typer_s(unreachable_api: str) -> None:
    result = CliRunner().invoke(app, ["deployment", "get"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output
    assert "error: " not in result.output


def _request() -> httpx.Request:
    return httpx.Request("GET", "http://127.0.0.1:4200/api/deployments/filter")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            DeploymentNotFound(
                "no deployment named 'x'; list them with `pipedeploy deployment ls`"
            ),
            "no deployment named 'x'; list them with `pipedeploy deployment ls`",
        ),
        (
            httpx.ConnectError("All connection attempts failed", request=_request()),
            "cannot reach the Prefect API at http://127.0.0.1:9/api (ConnectError: All "
            "connection attempts failed); start one with `pipedeploy up`, or point "
            "PREFECT_API_URL at a running server",
        ),
        (
            PrefectHTTPStatusError(
                "server error",
                request=_request(),
                response=httpx.Response(500, json={"detail": "boom"}, request=_request()),
            ),
            "the Prefect API at http://127.0.0.1:9/api refused a request: 500 boom",
        ),
        (
            ValueError("odd"),
            "unexpected ValueError: odd (a bug in prefect-pipedeploy: please report it; set "
            "PREFECT_DEBUG_MODE=1 to see its traceback)",
        ),
    ],
)
def test_error_message(error: Exception, message: str) -> None:
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert error_message(error) == message
