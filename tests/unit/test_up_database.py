"""`pipedeploy up --database`: what it accepts, what it refuses before starting anything, and
when `python3 dev.py up` installs PostgreSQL first."""

from __future__ import annotations

import socket

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

import dev
from prefect_pipedeploy.cli import app


def unused_api_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("mysql", "Invalid value for '--database'"),
        ("sqlite3", "Invalid value for '--database'"),
        ("", "Invalid value for '--database'"),
    ],
)
def test_only_the_two_databases_are_accepted(value: str, complaint: str) -> None:
    result = CliRunner().invoke(app, ["up", "--database", value])
    assert result.exit_code == 2, result.output
    assert complaint in result.output
    assert "sqlite" in result.output and "postgresql" in result.output  # the choices shown


def test_postgresql_with_a_configured_api_says_both_ways_out() -> None:
    """`up` would use the configured server, which keeps its own database: refused before
    anything starts (before: the option was silently ignored)."""
    url = unused_api_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        result = CliRunner().invoke(app, ["up", "--database", "postgresql"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --database postgresql "), lines
    assert url in lines[0] and "unset PREFECT_API_URL" in lines[0] and "drop --database" in lines[0]


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--database", "postgresql"], True),
        (["--database=postgresql"], True),
        (["--port", "0", "--database", "postgresql", "--demo"], True),
        (["--database", "sqlite"], False),
        (["--home", "postgresql"], False),
        (["--database"], False),
        ([], False),
    ],
)
def test_dev_up_installs_postgresql_only_when_asked_for(args: list[str], wanted: bool) -> None:
    assert dev.wants_postgresql(args) is wanted
