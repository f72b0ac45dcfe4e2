"""The local stack: start and stop the processes `pipedeploy up` (and the test fixtures) need.

For: an embedded Prefect server on SQLite under a project-local home, and child processes
(workers, gateway) started the way a user would start them and stopped with terminate, grace,
kill. Not for: deciding what runs where (the worker does), or production setups (point
PREFECT_API_URL at your server and start workers with `prefect worker start`).

    pipedeploy up            # uses this module
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from prefect_pipedeploy.exceptions import ServerUnavailable
from prefect_pipedeploy.prefect_api.poolcap import FILE_LEASE_STORAGE
from prefect_pipedeploy.runtimes.process import ChildProcess, start_child


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_environment(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of an embedded Prefect server whose database lives under `home`."""
    env = dict(base if base is not None else os.environ)
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"sqlite+aiosqlite:///{home / 'prefect.db'}"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
            # concurrency leases (the pool RAM cap's) on disk, so they survive a restart
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": FILE_LEASE_STORAGE,
            "PREFECT_LOGGING_LEVEL": env.get("PREFECT_LOGGING_LEVEL", "INFO"),
        }
    )
    env.pop("PREFECT_API_URL", None)
    return env


def start_prefect_server(
    home: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    ui: bool = True,
    timeout_s: float = 90.0,
    env_overrides: Mapping[str, str] | None = None,
) -> tuple[ChildProcess, str]:
    """Start `prefect server start` on SQLite under `home`; returns it and its API URL."""
    port = port or free_port(host)
    env = {**server_environment(home), **(env_overrides or {})}
    env["PREFECT_UI_ENABLED"] = "true" if ui else "false"
    child = start_child(
        "prefect-server",
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
        home / "logs" / "server.log",
        env=env,
    )
    api_url = f"http://{host}:{port}/api"
    try:
        wait_for_http(f"{api_url}/health", timeout_s, child)
    except Exception:
        child.stop()
        raise
    return child, api_url


def wait_for_http(url: str, timeout_s: float, child: ChildProcess | None = None) -> None:
    """Wait until `url` answers 200; fail early with the log tail if `child` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise ServerUnavailable(
                f"{child.name} exited with code {child.popen.returncode} before {url} answered;"
                f" its log ({child.log_path}) ends with:\n{child.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise ServerUnavailable(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def running(children: list[ChildProcess]) -> Iterator[list[ChildProcess]]:
    """Stop every child (last started first) when the block ends, whatever happens."""
    try:
        yield children
    finally:
        for child in reversed(children):
            child.stop()
