"""The `pipedeploy` command line: the local stack, the worker, deployments and executions.

For: what a user types. Each command is a thin layer over the SDK, the worker or the stack
module; errors print as one line naming what to fix, never a traceback.
Not for: logic of its own.

    pipedeploy up --demo                  # embedded Prefect server, pool, worker, demo pipeline
    pipedeploy worker --pool pipedeploy --ram-capacity 8GiB
    pipedeploy deployment ls | get NAME | rm NAME
    pipedeploy executions ls [--deployment NAME] | get ID | logs ID
    pipedeploy pool ram-cap [16GiB | --remove] [--pool NAME]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer

from prefect_pipedeploy.cli_datastore import datastore_app
from prefect_pipedeploy.cli_gateway import endpoint_app, gateway
from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.stack import ChildProcess

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
deployment_app = typer.Typer(no_args_is_help=True, help="Deployments: ls, get, rm, logs.")
executions_app = typer.Typer(no_args_is_help=True, help="Executions: ls, get, logs.")
pool_app = typer.Typer(no_args_is_help=True, help="Work pools: the pool-wide RAM cap.")
app.add_typer(deployment_app, name="deployment")
app.add_typer(executions_app, name="executions")
app.add_typer(pool_app, name="pool")
app.add_typer(datastore_app, name="datastore")
app.add_typer(endpoint_app, name="endpoint")
app.command()(gateway)

DEMO_DEPLOYMENT = "demo-score"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _sdk() -> Any:
    from prefect_pipedeploy.sdk import PipeDeploy

    return PipeDeploy()


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an SDK verb; our errors become one line, connection problems a hint."""
    import httpx

    try:
        return fn(*args, **kwargs)
    except PipeDeployError as exc:
        _fail(str(exc))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        _fail(
            f"cannot reach the Prefect API ({exc}); start it with `pipedeploy up` "
            "or set PREFECT_API_URL"
        )


# ---- worker ------------------------------------------------------------------------------------


@app.command()
def worker(
    pool: str = typer.Option("pipedeploy", "--pool", help="Work pool to serve."),
    ram_capacity: str = typer.Option(
        None, "--ram-capacity", help="RAM this worker may hand out, like '8GiB'."
    ),
    name: str = typer.Option(None, "--name", help="Worker name (default: a generated one)."),
) -> None:
    """Start a pipedeploy worker (same as `prefect worker start --type pipedeploy`)."""
    import asyncio

    from prefect_pipedeploy.worker import PipeDeployWorker

    if ram_capacity:
        os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_RAM_CAPACITY"] = ram_capacity

    async def serve() -> None:
        await PipeDeployWorker(work_pool_name=pool, name=name).start()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


# ---- the local stack -----------------------------------------------------------------------------


@app.command()
def up(
    demo: bool = typer.Option(False, "--demo", help="Deploy and run the example pipeline."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address the server listens on."),
    port: int = typer.Option(4200, "--port", help="Port of the embedded Prefect server."),
    gateway_port: int = typer.Option(8080, "--gateway-port", help="Port of the endpoint gateway."),
    pool: str = typer.Option("pipedeploy", "--pool", help="Work pool to create and serve."),
    home: Path = typer.Option(None, "--home", help="Where the local stack keeps its data."),
    exit_after_demo: bool = typer.Option(
        False, "--exit-after-demo", help="Stop everything once the demo has printed its outputs."
    ),
) -> None:
    """Start the whole local stack: Prefect server (SQLite), the pool, a worker. Ctrl-C stops it."""
    from prefect_pipedeploy.stack import (
        free_port,
        running,
        start_child,
        start_prefect_server,
        wait_for_http,
    )

    home = (home or get_settings().home).resolve()
    children: list[ChildProcess] = []
    stop = {"requested": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with running(children):
        api_url = os.environ.get("PREFECT_API_URL", "")
        if api_url:
            typer.echo(f"Using the Prefect API at {api_url}")
        else:
            if port == 0:
                port = free_port(host)
            try:
                server, api_url = start_prefect_server(home, host=host, port=port)
            except PipeDeployError as exc:
                _fail(f"{exc}\n(is port {port} in use? pass --port)")
            children.append(server)
            typer.echo(f"Prefect server:  {api_url}   (UI: {api_url.removesuffix('/api')})")
        env = {**os.environ, "PREFECT_API_URL": api_url}
        data_store = _ensure_data_store(api_url, home)
        env["PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE"] = data_store
        os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE"] = data_store
        typer.echo(f"Data store:      {data_store}")
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
                "prefect_pipedeploy.gateway",
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
        gateway_url = f"http://{host}:{gateway_port}"
        try:
            wait_for_http(f"{gateway_url}/health", 60, gateway_child)
        except PipeDeployError as exc:
            _fail(f"{exc}\n(is port {gateway_port} in use? pass --gateway-port)")
        os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL"] = gateway_url
        typer.echo(
            f"Gateway:         {gateway_url}/endpoints/<path>   (API docs: {gateway_url}/docs)"
        )
        if demo:
            _run_demo(api_url, pool)
            if exit_after_demo:
                return
        typer.echo("Ready. Press Ctrl-C to stop.")
        while not stop["requested"]:
            for child in children:
                if not child.alive():
                    _fail(f"{child.name} exited; see {child.log_path}:\n{child.log_tail()}")
            time.sleep(0.5)
        typer.echo("Stopping...")


def _ensure_data_store(api_url: str, home: Path) -> str:
    """The data store of the stack: the user's (if set), else a local directory under home."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_pipedeploy.iomapping import data_store_reference, ensure_local_data_store

    configured = data_store_reference()
    if configured:
        return configured
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return ensure_local_data_store(home / "datastore")


def _run_demo(api_url: str, pool: str) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_pipedeploy.sdk import PipeDeploy

    flows_dir = Path(__file__).resolve().parent.parent / "flows"
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        sdk = PipeDeploy(work_pool_name=pool)
        try:
            sdk.delete_deployment(DEMO_DEPLOYMENT)
        except PipeDeployError:
            pass
        created = sdk.create_deployment(
            f"{flows_dir / 'demo.py'}:score",
            DEMO_DEPLOYMENT,
            execution_rule="endpoint",
            mode="elastic",
            description="The demo pipeline: scores a text.",
        )
        typer.echo(f"Demo deployment: {created['name']} ({created['mode']}, {created['status']})")
        path = created["endpoint_url_path"]
        gateway_url = os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_URL"]
        typer.echo(
            f"Demo endpoint:   curl -L -X POST {gateway_url}/endpoints/{path} "
            f"-H 'Authorization: EndpointToken {created['endpoint_token']}' "
            "-H 'Content-Type: application/json' -d '{\"text\": \"hello\"}'"
        )
        result = sdk.trigger_endpoint(
            DEMO_DEPLOYMENT, created["endpoint_token"], {"text": "hello from prefect pipedeploy"}
        )
        execution = sdk.get_pipeline_execution(result["execution_id"])
        typer.echo(f"Demo execution:  {execution['execution_id']} -> {execution['status']}")
        typer.echo("Demo outputs:    " + json.dumps(result.get("outputs")))


# ---- deployments and executions ----------------------------------------------------------------


@deployment_app.command("ls")
def deployment_ls() -> None:
    """List deployments."""
    for d in _call(_sdk().list_deployments):
        typer.echo(f"{d['name']:30} {d['execution_rule']:9} {d['mode']:12} {d['status']}")


@deployment_app.command("get")
def deployment_get(name: str) -> None:
    """Show one deployment as JSON."""
    _print_json(_call(_sdk().get_deployment, name))


@deployment_app.command("rm")
def deployment_rm(name: str) -> None:
    """Delete a deployment."""
    _call(_sdk().delete_deployment, name)
    typer.echo(f"Deleted {name}")


@deployment_app.command("logs")
def deployment_logs(name: str) -> None:
    """Print the output of a low-latency deployment's pod (start-up, import errors, crashes)."""
    for line in _call(_sdk().get_deployment_logs, name):
        typer.echo(line)


@executions_app.command("ls")
def executions_ls(
    deployment: str = typer.Option(None, "--deployment", help="Only this deployment's."),
    limit: int = typer.Option(50, "--limit"),
) -> None:
    """List executions, newest first."""
    for e in _call(_sdk().list_pipeline_executions, deployment, limit):
        typer.echo(
            f"{e['execution_id']}  {e['deployment_name'] or '-':24} {e['status']:9} "
            f"{e['created']}  {e['message'] or ''}"
        )


@executions_app.command("get")
def executions_get(execution_id: str) -> None:
    """Show one execution as JSON (status, attempts, outputs)."""
    _print_json(_call(_sdk().get_pipeline_execution, execution_id))


@executions_app.command("logs")
def executions_logs(execution_id: str) -> None:
    """Print the logs of one execution."""
    for line in _call(_sdk().get_pipeline_execution_logs, execution_id):
        typer.echo(f"{line['timestamp']} {line['level']:7} {line['message']}")


@pool_app.command("ram-cap")
def pool_ram_cap(
    size: str = typer.Argument(None, help="New cap, like '16GiB'; omit to show the current one."),
    pool: str = typer.Option(None, "--pool", help="Work pool (default: the default pool)."),
    remove: bool = typer.Option(False, "--remove", help="Remove the cap."),
) -> None:
    """Show, set or remove the RAM all workers of a pool may hold together."""
    sdk = _sdk()
    pool = pool or get_settings().default_pool
    if remove:
        _call(sdk.set_pool_ram_cap, None, pool)
        typer.echo(f"No RAM cap on pool {pool!r}")
        return
    cap = _call(sdk.set_pool_ram_cap, size, pool) if size else _call(sdk.get_pool_ram_cap, pool)
    if cap is None:
        typer.echo(f"No RAM cap on pool {pool!r}; set one with `pipedeploy pool ram-cap 16GiB`")
    else:
        _print_json(cap)


if __name__ == "__main__":
    app()
