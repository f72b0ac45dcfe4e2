"""Shared fixtures: one real Prefect server per test session, real worker processes per pool.

The server is `prefect server start` on SQLite in a temporary home, on a free 127.0.0.1 port,
started through the same code `pipedeploy up` uses; every test talks to it over HTTP.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# Settings must be in place before Prefect is imported anywhere in this process.
_TEST_HOME = Path(tempfile.mkdtemp(prefix="pipedeploy-tests-"))
os.environ["PREFECT_HOME"] = str(_TEST_HOME / "client")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

import psutil  # noqa: E402
import pytest  # noqa: E402

from prefect_pipedeploy.stack import (  # noqa: E402
    ChildProcess,
    start_child,
    start_prefect_server,
)

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The API URL of a real Prefect server, set as PREFECT_API_URL for this process and children."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server, api_url = start_prefect_server(_TEST_HOME / "server", ui=False)
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def start_worker(
    pool: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> ChildProcess:
    """Start `pipedeploy worker --pool POOL` as a user would, and wait until it says so."""
    child = start_child(
        f"worker-{pool}",
        [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", pool, *extra],
        log_dir / f"worker-{pool}-{uuid.uuid4().hex[:6]}.log",
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "started!" in child.log_path.read_text(errors="replace"):
            return child
        if not child.alive():
            break
        time.sleep(0.2)
    child.stop()
    raise RuntimeError(f"worker did not start; its log ends with:\n{child.log_tail()}")


@pytest.fixture(scope="module")
def pool(prefect_api: str) -> str:
    """A fresh work pool name per test module, so modules do not see each other's runs."""
    return f"pool-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    """A real `pipedeploy worker` process serving the module's pool."""
    child = start_worker(pool, tmp_path_factory.mktemp("worker-logs"))
    yield child
    child.stop()


@pytest.fixture(scope="module")
def sdk(pool: str):  # noqa: ANN201 - PipeDeploy
    from prefect_pipedeploy import PipeDeploy

    return PipeDeploy(work_pool_name=pool)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def eventual_log_messages(sdk, execution_id: str, timeout_s: float = 15) -> list[str]:  # noqa: ANN001
    """A run's log lines; they reach the server in batches, shortly after its final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        messages = [line["message"] for line in sdk.get_pipeline_execution_logs(execution_id)]
        if any("Finished in state" in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.3)


def cmdline(process: psutil.Process) -> str:
    """A process's command line; empty once it has exited (or is a zombie)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
