"""The CLI's one error boundary on the real app against the real server: a missing deployment or
execution prints one line `error: ...` naming it and how to list what exists, exit 1."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from prefect_pipedeploy.cli import app


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["deployment", "get", "no-such-deployment"], "no deployment named 'no-such-deployment'"),
        (["deployment", "rm", "no-such-deployment"], "no deployment named 'no-such-deployment'"),
        (["deployment", "logs", "no-such-deployment"], "no deployment named 'no-such-deployment'"),
        (["executions", "ls", "--deployment", "no-such-deployment"], "no deployment named"),
        (["executions", "get", "not-an-id"], "no execution with id 'not-an-id'"),
        (["endpoint", "token", "no-such-deployment"], "no deployment named 'no-such-deployment'"),
    ],
)
def test_missing_objects_are_one_line_errors(
    prefect_api: str, command: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert "pipedeploy deployment ls" in lines[0] or "pipedeploy executions ls" in lines[0]
    assert "Traceback" not in result.output
