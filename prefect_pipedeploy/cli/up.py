"""`pipedeploy up`: the whole local stack (Prefect server, pool, worker, gateway), and its demo.

pipedeploy up --demo
pipedeploy up --database postgresql     # the server on a PostgreSQL cluster kept in <home>/postgres
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer

from prefect_pipedeploy.cli.app import app, fail
from prefect_pipedeploy.exceptions import DatabaseUnavailable, DeploymentNotFound, PipeDeployError
from prefect_pipedeploy.postgresql import PostgreSQL
from prefect_pipedeploy.sdk.client import PipeDeploy
from prefect_pipedeploy.settings import env_name, get_settings
from prefect_pipedeploy.stack import ChildProcess, Database, sqlite_url

DEMO_DEPLOYMENT = "demo-score"

#: The gateway's create settings for the server `up` starts, per database, unless set
#: (`gateway_max_creating`, `gateway_max_queued`; the settings' defaults, 1 and 10, suit a
#: Prefect server on SQLite started any other way). Measured (benchmarks/README.md, 32
#: concurrent callers while a parallel pod is busy):
#: - PostgreSQL: 4 creates at a time accepted ~9-12 calls/s, 8 ~14-15/s, 16 ~16-19/s, the
#:   server's one process then at ~92 % of a core. The queue holds two turns of creates, so that
#:   a burst waits instead of meeting 429s.
#: - SQLite: `up`'s server begins its flow-run creates IMMEDIATE (`serverproc`), so creates at
#:   once wait for each other instead of failing with 503: 4 at a time accepted 11.3-11.8
#:   (direct) and 11.1-17.8 (worker path) calls/s over three runs, where 1 (every write
#:   IMMEDIATE) accepted 9.3 and 10.3. On a server that begins them DEFERRED (Prefect's own),
#:   more than 1 at a time made calls wait past a minute.
GATEWAY_SETTINGS: dict[Database, dict[str, int]] = {
    Database.sqlite: {"gateway_max_creating": 4},
    Database.postgresql: {"gateway_max_creating": 16, "gateway_max_queued": 32},
}


def with_gateway_settings(env: dict[str, str], database: Database) -> dict[str, str]:
    """`env` with the gateway's create settings for `database` (`GATEWAY_SETTINGS`) where it
    sets none of its own."""
    for name, value in GATEWAY_SETTINGS[database].items():
        env.setdefault(env_name(name), str(value))
    return env


@app.command()
def up(
    demo: bool = typer.Option(False, "--demo", help="Deploy and run the example pipeline."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the server listens on."),
    port: int = typer.Option(4200, "--port", help="Port of the embedded Prefect server."),
    gateway_port: int = typer.Option(8080, "--gateway-port", help="Port of the endpoint gateway."),
    pool: str = typer.Option(
        None, "--pool", help="Work pool to create and serve (default: the default_pool setting)."
    ),
    home: Path = typer.Option(None, "--home", help="Where the local stack keeps its data."),
    database: Database = typer.Option(
        Database.sqlite,
        "--database",
        help=(
            "The Prefect server's database: sqlite (a file under --home) or postgresql (a"
            " PostgreSQL cluster kept in <home>/postgres, from Debian's postgresql package)."
        ),
    ),
    exit_after_demo: bool = typer.Option(
        False, "--exit-after-demo", help="Stop everything once the demo has printed its outputs."
    ),
) -> None:
    """Start the whole local stack: Prefect server (SQLite, or PostgreSQL with --database
    postgresql), the pool, a worker, the gateway. Ctrl-C stops it."""
    from prefect_pipedeploy.stack import (
        StackRecord,
        free_port,
        reachable_host,
        recorded,
        running,
        start_child,
        start_prefect_server_on,
        wait_for_http,
    )

    settings = get_settings()
    home = (home or settings.home).resolve()
    pool = pool or settings.default_pool
    children: list[ChildProcess] = []
    stop = {"requested": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop["requested"] = True

    api_url = _configured_api(database)  # before anything starts: it may stop `up`
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with running(children):
        if api_url:
            typer.echo(f"Using the Prefect API at {api_url} (PREFECT_API_URL is set)")
        else:
            if port == 0:
                port = free_port(host)
            try:
                started, api_url = start_prefect_server_on(
                    database, home, database_dir=home / "postgres", host=host, port=port
                )
            except DatabaseUnavailable as exc:
                fail(str(exc))
            except PipeDeployError as exc:
                fail(f"{exc}\n(is port {port} in use? pass --port)")
            children.extend(started)
            typer.echo(f"Database:        {_describe_database(started, home)}")
            ui_url = f"http://{reachable_host(host)}:{port}"
            typer.echo(f"Prefect server:  {api_url}   (UI: {ui_url})")
        data_store = _ensure_data_store(api_url, home)
        # The children get this process's settings, with the stack's data store, by variable.
        stack_settings = settings.model_copy(update={"data_store": data_store})
        env = {
            **os.environ,
            "PREFECT_API_URL": api_url,
            **stack_settings.to_environment_variables(exclude_unset=True),
        }
        typer.echo(f"Data store:      {data_store}")
        # --home reaches the worker too: its pod state and RAM leases belong to the stack's home,
        # not to a `.pipedeploy` in whatever directory `up` was started from
        env["PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME"] = str(home)
        with_gateway_settings(env, database)
        worker_child = start_child(
            "worker",
            [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", pool],
            home / "logs" / "worker.log",
            env=env,
        )
        children.append(worker_child)
        typer.echo(f"Worker:          pool {pool!r}, log {worker_child.log_path}")
        if gateway_port == 0:
            gateway_port = free_port(host)
        gateway_child = start_child(
            "gateway",
            [
                sys.executable,
                "-m",
                "prefect_pipedeploy.cli",
                "gateway",
                "--pool",
                pool,
                "--host",
                host,
                "--port",
                str(gateway_port),
            ],
            home / "logs" / "gateway.log",
            env=env,
        )
        children.append(gateway_child)
        gateway_url = f"http://{reachable_host(host)}:{gateway_port}"
        try:
            wait_for_http(f"{gateway_url}/health", 60, gateway_child)
        except PipeDeployError as exc:
            fail(f"{exc}\n(is port {gateway_port} in use? pass --gateway-port)")
        typer.echo(
            f"Gateway:         {gateway_url}/endpoints/<path>   (API docs: {gateway_url}/docs)"
        )
        _wait_for_worker(api_url, pool, worker_child)
        record = StackRecord(api_url, gateway_url, pool, data_store, str(home), os.getpid())
        with recorded(record):
            if demo:
                _run_demo(api_url, pool, data_store, gateway_url)
                if exit_after_demo:
                    return
            typer.echo(
                "Another shell: `pipedeploy ...` and `PipeDeploy()` find this stack by themselves"
                " (from this directory, or any while it is the last one started); elsewhere, or"
                " for Prefect's own CLI:\n"
                f"  export PREFECT_API_URL={api_url}\n"
                f"  export {env_name('gateway_url')}={gateway_url}\n"
                f"  export {env_name('data_store')}={data_store}"
            )
            typer.echo("Ready. Press Ctrl-C to stop.")
            while not stop["requested"]:
                for child in children:
                    if not child.alive():
                        fail(f"{child.name} exited; see {child.log_path}:\n{child.log_tail()}")
                time.sleep(0.5)
            typer.echo("Stopping...")


#: How long `up` waits for its worker to come online in its pool (a first start imports Prefect
#: and the worker's modules: ~10 s on a loaded 2-core machine).
WORKER_ONLINE_TIMEOUT_S = 120.0


def _wait_for_worker(api_url: str, pool: str, worker: ChildProcess) -> None:
    """Return once `worker` has created (or found) `pool` and heartbeats in it, so that what
    `up` prints "Ready." after (the pool, its settings form) is there; stop `up` with the
    worker's log when it exits or stays away."""
    from prefect.client.orchestration import PrefectClient
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def online() -> bool:
        async with PrefectClient(api_url) as client:
            try:
                return bool(await client.read_workers_for_work_pool(pool))
            except ObjectNotFound:
                return False
            except PrefectHTTPStatusError as exc:  # 3.9.1 raises a bare 404: no pool yet
                if exc.response.status_code == 404:
                    return False
                raise

    deadline = time.monotonic() + WORKER_ONLINE_TIMEOUT_S
    while not run_coro_as_sync(online()):
        if not worker.alive():
            fail(f"the worker exited; see {worker.log_path}:\n{worker.log_tail()}")
        if time.monotonic() >= deadline:
            fail(
                f"the worker did not come online in pool {pool!r} within "
                f"{WORKER_ONLINE_TIMEOUT_S:g} s; see {worker.log_path}:\n{worker.log_tail()}"
            )
        time.sleep(0.5)


def _describe_database(started: list[ChildProcess], home: Path) -> str:
    """What `up` prints of the server's database: the PostgreSQL cluster it started, if any."""
    for child in started:
        if isinstance(child, PostgreSQL):
            return f"{child.describe()}, log {child.log_path}"
    return f"SQLite, {sqlite_url(home).split('///', 1)[1]}"


def _configured_api(database: Database = Database.sqlite) -> str | None:
    """The Prefect API the user configured (environment or profile), checked to answer: `up`
    then uses it rather than starting a server. One that does not answer stops `up` with what
    it tried and the two ways out (before: a traceback ending in ConnectError); so does one
    set together with `--database postgresql`, which only a server `up` starts can honour."""
    from prefect.settings import PREFECT_API_URL

    from prefect_pipedeploy.stack import wait_for_http

    api_url = PREFECT_API_URL.value()
    if not api_url:
        return None
    source = "the environment" if os.environ.get("PREFECT_API_URL") else "your Prefect profile"
    if database is not Database.sqlite:
        fail(
            f"--database {database} starts a Prefect server on {database}, but PREFECT_API_URL"
            f" is set to {api_url} (in {source}), so `pipedeploy up` would use that server."
            " Either unset PREFECT_API_URL (`unset PREFECT_API_URL`, or `prefect config unset"
            " PREFECT_API_URL` for a profile), or drop --database: that server keeps its own."
        )
    try:
        wait_for_http(f"{api_url.rstrip('/')}/health", 5)
    except PipeDeployError:
        fail(
            f"PREFECT_API_URL is set to {api_url} (in {source}), so `pipedeploy up` uses that"
            " server instead of starting its own, but it does not answer. Either start that"
            " server, or unset PREFECT_API_URL (`unset PREFECT_API_URL`, or `prefect config"
            " unset PREFECT_API_URL` for a profile) and `pipedeploy up` starts its own."
        )
    return str(api_url)


def _ensure_data_store(api_url: str, home: Path) -> str:
    """The data store of the stack: the user's (if set), else a local directory under home."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_pipedeploy.datastore.configured import (
        data_store_reference,
        ensure_local_data_store,
    )

    configured = data_store_reference()
    if configured:
        return configured
    root = home / "datastore"
    root.mkdir(parents=True, exist_ok=True)  # there from the start, not at the first upload
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return ensure_local_data_store(root)


def _run_demo(api_url: str, pool: str, data_store: str, gateway_url: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_pipedeploy.examples import demo

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        sdk = PipeDeploy(
            api_url=api_url, work_pool_name=pool, data_store=data_store, gateway_url=gateway_url
        )
        with contextlib.suppress(DeploymentNotFound):
            sdk.delete_deployment(DEMO_DEPLOYMENT)
        created = sdk.create_deployment(
            f"{demo.__file__}:score",
            DEMO_DEPLOYMENT,
            execution_rule="endpoint",
            mode="elastic",
            description="The demo pipeline: scores a text.",
        )
        typer.echo(f"Demo deployment: {created['name']} ({created['mode']}, {created['status']})")
        path = created["endpoint_url_path"]
        typer.echo(
            # no -X POST: after the 303 to the execution, curl -L would POST there too
            f"Demo endpoint:   curl -L {gateway_url}/endpoints/{path} "
            f"-H 'Authorization: EndpointToken {created['endpoint_token']}' "
            "-H 'Content-Type: application/json' -d '{\"text\": \"hello\"}'"
        )
        result = sdk.trigger_endpoint(
            DEMO_DEPLOYMENT, created["endpoint_token"], {"text": "hello from prefect pipedeploy"}
        )
        execution = sdk.get_pipeline_execution(result["execution_id"])
        typer.echo(f"Demo execution:  {execution['execution_id']} -> {execution['status']}")
        typer.echo("Demo outputs:    " + json.dumps(result.get("outputs")))
