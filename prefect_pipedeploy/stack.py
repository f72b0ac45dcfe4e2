"""The local stack: start and stop the processes `pipedeploy up` (and the test fixtures) need.

For: an embedded Prefect server under a project-local home, on SQLite or on a PostgreSQL
cluster of its own (`start_prefect_server_on`; the cluster itself is postgresql.py's), and child processes
(workers, gateway) started the way a user would start them and stopped with terminate, grace,
kill; the record a running `pipedeploy up` leaves (`StackRecord`) so that another shell's CLI
and SDK find it when no PREFECT_API_URL is set (`find_running_stack`). Not for: deciding what
runs where (the worker does), or production setups (point PREFECT_API_URL at your server and
start workers with `prefect worker start`).

    pipedeploy up            # uses this module
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from prefect_pipedeploy.exceptions import ServerUnavailable
from prefect_pipedeploy.postgresql import pool_settings, start_postgresql
from prefect_pipedeploy.prefect_api.poolcap import FILE_LEASE_STORAGE
from prefect_pipedeploy.runtimes.process import ChildProcess, start_child


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wildcard(host: str) -> bool:
    """Whether `host` is an "every interface" bind address rather than one a client can use."""
    return host in ("0.0.0.0", "::", "")


def reachable_host(host: str) -> str:
    """The address a browser (or another machine) uses for a server bound to `host`: `host`
    itself, or for a wildcard bind the address of this machine's outward interface (no packet
    is sent), 127.0.0.1 when it has none."""
    if not wildcard(host):
        return host
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 1))  # routing only: UDP connect sends nothing
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class Database(enum.StrEnum):
    """Where an embedded Prefect server keeps its data (`pipedeploy up --database`)."""

    sqlite = "sqlite"  # one file under the stack's home: one machine, light load
    postgresql = "postgresql"  # a PostgreSQL cluster of the stack's own (postgresql.py)


def sqlite_url(home: Path) -> str:
    """The SQLAlchemy URL of the SQLite database of a server whose home is `home`."""
    return f"sqlite+aiosqlite:///{home / 'prefect.db'}"


def server_environment(
    home: Path,
    base: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int = 4200,
    database_url: str | None = None,
) -> dict[str, str]:
    """Environment of an embedded Prefect server whose home is `home`, on the database at
    `database_url` (default: SQLite under `home`), listening on `host`:`port`. Its UI asks for
    its API at that address (Prefect derives the UI's API URL from PREFECT_SERVER_API_HOST/PORT,
    not from `prefect server start --port`: before, the UI of a server on any port but 4200
    called 127.0.0.1:4200). A PREFECT_UI_API_URL the user set is kept (a reverse proxy's), and
    so are the connection pool's settings (under either name Prefect reads), which are
    `postgresql.SERVER_POOL`'s on PostgreSQL otherwise."""
    env = dict(base if base is not None else os.environ)
    home.mkdir(parents=True, exist_ok=True)
    env.setdefault("PREFECT_UI_API_URL", f"http://{reachable_host(host)}:{port}/api")
    if database_url is not None and database_url.startswith("postgresql"):
        env.update(pool_settings(env))
    env.update(
        {
            "PREFECT_SERVER_API_HOST": host,
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url or sqlite_url(home),
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
    database_url: str | None = None,
) -> tuple[ChildProcess, str]:
    """Start `prefect server start` with its home in `home`, on the database at `database_url`
    (default: SQLite under `home`); returns it and its API URL."""
    port = port or free_port(host)
    env = {
        **server_environment(home, host=host, port=port, database_url=database_url),
        **(env_overrides or {}),
    }
    env["PREFECT_UI_ENABLED"] = "true" if ui else "false"
    child = start_child(
        "prefect-server",
        [
            sys.executable,
            "-m",
            "prefect_pipedeploy.serverproc",  # `prefect`; fewer GC pauses, creates that wait
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
    api_url = f"http://{'127.0.0.1' if wildcard(host) else host}:{port}/api"
    try:
        wait_for_http(f"{api_url}/health", timeout_s, child)
    except Exception:
        child.stop()
        raise
    return child, api_url


def start_prefect_server_on(
    database: Database | str,
    home: Path,
    database_dir: Path | None = None,
    **server_options: Any,
) -> tuple[list[ChildProcess], str]:
    """Start a Prefect server with its home in `home` on `database`; returns the processes
    started, the database's first (`running` stops them in reverse), and the API URL.

    For "sqlite": `start_prefect_server` as it is. For "postgresql": first a PostgreSQL cluster
    kept in `database_dir` (reused by the next start), or, with no `database_dir`, a throwaway
    one removed when it stops, then the server on it; its log is `home/logs/postgresql.log`.
    `server_options` go to `start_prefect_server` (host, port, ui, timeout_s, env_overrides).
    What is started is stopped again when the server does not come up."""
    if Database(database) is Database.sqlite:
        server, api_url = start_prefect_server(home, **server_options)
        return [server], api_url
    cluster = start_postgresql(free_port(), database_dir, log_path=home / "logs" / "postgresql.log")
    try:
        server, api_url = start_prefect_server(home, database_url=cluster.url, **server_options)
    except BaseException:
        cluster.stop()
        raise
    return [cluster, server], api_url


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


STACK_FILE = "stack.json"
USER_STACK_FILE = "pipedeploy-stack.json"


@dataclass(frozen=True)
class StackRecord:
    """What another shell needs of a running `pipedeploy up`: where its server, gateway and
    data store are. Written to `<home>/stack.json` and to `$PREFECT_HOME/pipedeploy-stack.json`
    once the stack is ready, removed when it stops."""

    api_url: str
    gateway_url: str
    pool: str
    data_store: str
    home: str
    pid: int

    def describe(self) -> str:
        return (
            f"the local stack of `pipedeploy up` (pid {self.pid}, home {self.home}): "
            f"Prefect API {self.api_url}, gateway {self.gateway_url}"
        )


def stack_record_paths(home: Path) -> list[Path]:
    """Where a stack whose home is `home` is recorded, the project's place first."""
    from prefect.settings import PREFECT_HOME

    return [home / STACK_FILE, Path(PREFECT_HOME.value()) / USER_STACK_FILE]


@contextlib.contextmanager
def recorded(record: StackRecord) -> Iterator[None]:
    """Leave `record` where `find_running_stack` looks while the block runs."""
    paths = stack_record_paths(Path(record.home))
    text = json.dumps(asdict(record), indent=2)
    for path in paths:
        with contextlib.suppress(OSError):  # a read-only PREFECT_HOME loses the shortcut only
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    try:
        yield
    finally:
        for path in paths:
            with contextlib.suppress(OSError, ValueError):
                if StackRecord(**json.loads(path.read_text())).pid == record.pid:
                    path.unlink()


def find_running_stack(home: Path) -> StackRecord | None:
    """The `pipedeploy up` stack this shell should use when no Prefect API is configured: the
    one recorded under the project's `home`, else the one recorded under PREFECT_HOME; only a
    stack whose process is alive and whose API answers."""
    for path in stack_record_paths(home):
        try:
            record = StackRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if not psutil.pid_exists(record.pid):
            continue
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{record.api_url}/health", timeout=2).status_code == 200:
                return record
    return None
