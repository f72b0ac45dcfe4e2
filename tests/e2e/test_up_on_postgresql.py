"""`pipedeploy up --database postgresql` from start to Ctrl-C: the stack comes up with its
server on a PostgreSQL cluster of its own (kept in `<home>/postgres`), a deployment runs (its
execution a row of that database), and Ctrl-C stops every process, PostgreSQL's too.
The end-to-end core on a Prefect server on PostgreSQL: test_on_postgresql.py.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.postgresql import OS_USER, connection_url
from prefect_pipedeploy.settings import env_name
from tests.support.executions import deploy, unique
from tests.support.local_stack import pipedeploy_up
from tests.support.postgresql import flow_runs_in, open_directory


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """The test's directory; the stack's PostgreSQL cluster is kept in it, and removed with it."""
    with open_directory("pipedeploy-up-postgresql-") as path:
        yield path


def test_up_on_postgresql_runs_a_deployment_and_stops_its_database(open_dir: Path) -> None:
    with pipedeploy_up(open_dir, unique("pg-up"), "--database", "postgresql") as stack:
        output = (open_dir / "up.log").read_text()
        cluster_dir = Path(stack.home) / "postgres"
        line = next(line for line in output.splitlines() if line.startswith("Database:"))
        assert line.startswith("Database:        PostgreSQL 15 on 127.0.0.1:"), line
        assert f"data in {cluster_dir / 'data'}, kept" in line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        up = psutil.Process(stack.pid)
        postmaster = [p for p in up.children() if p.name() == "postgres"]
        assert len(postmaster) == 1, up.children()
        if os.geteuid() == 0:  # PostgreSQL refuses root: `up` runs it as `postgres`
            assert postmaster[0].username() == OS_USER

        # the gateway creates 16 executions at a time on PostgreSQL, 32 calls queued (4 and
        # 10 on SQLite: tests/e2e/test_ui_browser.py)
        environ = next(p for p in up.children() if "gateway" in p.cmdline()).environ()
        assert environ.get(env_name("gateway_max_creating")) == "16"
        assert environ.get(env_name("gateway_max_queued")) == "32"

        sdk = PipeDeploy(stack.api_url, stack.pool, stack.data_store, stack.gateway_url)
        name = deploy(sdk, "counter")
        execution = sdk.run_deployment(name, {"marker": "up-on-postgresql"}, timeout_s=120)
        assert execution["status"] == "Succeeded", execution
        password = (cluster_dir / "password").read_text().strip()
        assert flow_runs_in(connection_url(port, password), execution["execution_id"]) == 1

        tree = up.children(recursive=True)  # the server, the worker, the gateway, PostgreSQL's
        up.send_signal(signal.SIGINT)  # Ctrl-C
        assert up.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(tree, timeout=15)
        assert alive == [], f"left running: {alive}"
        assert not postmaster[0].is_running()
    assert (cluster_dir / "data" / "PG_VERSION").exists()  # kept for the next `up`
    assert not (cluster_dir / "data" / "postmaster.pid").exists()  # shut down cleanly
