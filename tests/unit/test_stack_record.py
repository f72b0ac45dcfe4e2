"""The local stack's record and addresses: what another shell finds, and what the UI is told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_HOME, temporary_settings

from prefect_pipedeploy.stack import (
    StackRecord,
    find_running_stack,
    reachable_host,
    recorded,
    server_environment,
    wildcard,
)


@pytest.mark.parametrize(
    ("host", "is_wildcard"),
    [("0.0.0.0", True), ("::", True), ("", True), ("127.0.0.1", False), ("myhost", False)],
)
def test_wildcard_hosts(host: str, is_wildcard: bool) -> None:
    assert wildcard(host) is is_wildcard


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.1.2.3"])
def test_a_named_host_is_its_own_address(host: str) -> None:
    assert reachable_host(host) == host


def test_a_wildcard_bind_is_reached_at_an_address_of_this_machine() -> None:
    address = reachable_host("0.0.0.0")
    assert not wildcard(address) and address.count(".") == 3


@pytest.mark.parametrize(
    ("host", "port", "ui_api_url"),
    [
        ("127.0.0.1", 4331, "http://127.0.0.1:4331/api"),
        ("127.0.0.1", 4200, "http://127.0.0.1:4200/api"),
        ("localhost", 5000, "http://localhost:5000/api"),
    ],
)
def test_the_ui_asks_for_the_api_where_the_server_listens(
    tmp_path: Path, host: str, port: int, ui_api_url: str
) -> None:
    env = server_environment(tmp_path, base={"PREFECT_API_URL": "x"}, host=host, port=port)
    assert env["PREFECT_UI_API_URL"] == ui_api_url
    assert (env["PREFECT_SERVER_API_HOST"], env["PREFECT_SERVER_API_PORT"]) == (host, str(port))
    assert "PREFECT_API_URL" not in env


def test_a_ui_api_url_the_user_set_is_kept(tmp_path: Path) -> None:
    base = {"PREFECT_UI_API_URL": "https://proxy.example/prefect/api"}
    env = server_environment(tmp_path, base=base, host="0.0.0.0", port=4331)
    assert env["PREFECT_UI_API_URL"] == "https://proxy.example/prefect/api"


def record(home: Path, pid: int, api_url: str = "http://127.0.0.1:9/api") -> StackRecord:
    return StackRecord(api_url, "http://127.0.0.1:8", "pool", "store/x", str(home), pid)


def test_a_record_lives_while_its_block_runs_in_both_places(tmp_path: Path) -> None:
    home, prefect_home = tmp_path / "stack", tmp_path / "prefect-home"
    with temporary_settings(updates={PREFECT_HOME: str(prefect_home)}):
        with recorded(record(home, os.getpid())):
            places = [home / "stack.json", prefect_home / "pipedeploy-stack.json"]
            assert [json.loads(p.read_text())["pid"] for p in places] == [os.getpid()] * 2
        assert [p for p in places if p.exists()] == []


def test_a_stack_whose_process_is_gone_or_whose_api_is_silent_is_not_found(
    tmp_path: Path,
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "prefect-home")}):
        with recorded(record(tmp_path, gone.pid)):
            assert find_running_stack(tmp_path) is None
        with recorded(record(tmp_path, os.getpid())):  # alive, but nothing answers on port 9
            assert find_running_stack(tmp_path) is None
        (tmp_path / "stack.json").write_text("not json")
        assert find_running_stack(tmp_path) is None
