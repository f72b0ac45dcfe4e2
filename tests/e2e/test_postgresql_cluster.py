"""The stack's PostgreSQL cluster, real: Debian's postgresql started and stopped by
prefect_pipedeploy.postgresql (a server process of its own: this tier), talked to with asyncpg
(Prefect's own driver). A Prefect server on it: test_on_postgresql.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from prefect_pipedeploy.exceptions import DatabaseUnavailable
from prefect_pipedeploy.postgresql import PostgreSQL, connection_url, start_postgresql
from prefect_pipedeploy.stack import free_port
from tests.support.postgresql import fetch_value, open_directory


def processes_of(cluster: PostgreSQL) -> list[psutil.Process]:
    try:
        postmaster = psutil.Process(cluster.popen.pid)
        return [postmaster, *postmaster.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def open_dir() -> Iterator[Path]:
    with open_directory("pipedeploy-pg-") as path:
        yield path


@pytest.fixture
def kept_dir(open_dir: Path) -> Path:
    """Where a kept cluster lives (made by the first start)."""
    return open_dir / "postgres"


def test_a_throwaway_cluster_serves_prefect_s_url_and_leaves_nothing() -> None:
    cluster = start_postgresql(free_port())
    try:
        processes = processes_of(cluster)
        assert fetch_value(cluster.url, "SELECT current_database()") == "prefect"
        # what Prefect's migrations create
        assert (
            fetch_value(cluster.url, "SELECT 1", first="CREATE EXTENSION IF NOT EXISTS pg_trgm")
            == 1
        )
        assert fetch_value(cluster.url, "SHOW listen_addresses") == "127.0.0.1"
        assert fetch_value(cluster.url, "SHOW unix_socket_directories") == ""
        with pytest.raises(asyncpg.InvalidPasswordError):
            fetch_value(connection_url(cluster.port, "not-the-password"), "SELECT 1")
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as `postgres`
            assert psutil.Process(cluster.popen.pid).username() == "postgres"
    finally:
        cluster.stop()
    assert cluster.popen.returncode == 0  # a clean (fast) shutdown, not a kill
    assert not cluster.data_dir.parent.exists()
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert alive == [], f"left running: {alive}"


def test_a_kept_cluster_is_reused_with_its_data(kept_dir: Path) -> None:
    first = start_postgresql(free_port(), kept_dir)
    try:
        fetch_value(
            first.url, "SELECT 1", first="CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"
        )
        with pytest.raises(DatabaseUnavailable, match=r"running already \(pid \d+\).*--home"):
            start_postgresql(free_port(), kept_dir)
    finally:
        first.stop()
    assert (kept_dir / "data" / "PG_VERSION").exists()  # kept
    second = start_postgresql(free_port(), kept_dir)
    try:
        assert second.port != first.port
        assert fetch_value(second.url, "SELECT x FROM kept") == 42
    finally:
        second.stop()


def test_a_cluster_of_another_version_is_refused(kept_dir: Path) -> None:
    start_postgresql(free_port(), kept_dir).stop()
    (kept_dir / "data" / "PG_VERSION").write_text("9\n")
    with pytest.raises(DatabaseUnavailable, match=r"made by PostgreSQL 9.*pg_upgrade.*remove"):
        start_postgresql(free_port(), kept_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to `postgres`")
def test_a_directory_postgres_cannot_enter_is_named_with_the_fix(open_dir: Path) -> None:
    blocked = open_dir / "private"
    blocked.mkdir(mode=0o700)
    with pytest.raises(DatabaseUnavailable) as error:
        start_postgresql(free_port(), blocked / "stack" / "postgres")
    assert f"cannot enter {blocked}" in str(error.value)
    assert f"chmod o+x {blocked}" in str(error.value) and "--home" in str(error.value)
    assert not (blocked / "stack").exists()
