"""`pipedeploy worker`, `deployment`, `executions` and `pool`: thin layers over the SDK and the worker.

pipedeploy worker --pool pipedeploy --ram-capacity 8GiB
pipedeploy deployment ls | get NAME | rm NAME | logs NAME
pipedeploy executions ls [--deployment NAME] | get ID | logs ID | cancel ID
pipedeploy pool ram-cap [16GiB | --remove] [--pool NAME]
"""

from __future__ import annotations

import contextlib
import signal

import typer

from prefect_pipedeploy.cli.app import app, make_sdk, print_json, print_table
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.worker.worker import PipeDeployWorker

deployment_app = typer.Typer(no_args_is_help=True, help="Deployments: ls, get, rm, logs.")


executions_app = typer.Typer(no_args_is_help=True, help="Executions: ls, get, logs, cancel.")


pool_app = typer.Typer(no_args_is_help=True, help="Work pools: the pool-wide RAM cap.")

app.add_typer(deployment_app, name="deployment")
app.add_typer(executions_app, name="executions")
app.add_typer(pool_app, name="pool")


@app.command()
def worker(
    pool: str = typer.Option(
        None, "--pool", help="Work pool to serve (default: the default_pool setting)."
    ),
    ram_capacity: str = typer.Option(
        None,
        "--ram-capacity",
        help="RAM this worker may hand out, like '8GiB' (default: the ram_capacity setting).",
    ),
    name: str = typer.Option(None, "--name", help="Worker name (default: a generated one)."),
    with_healthcheck: bool = typer.Option(
        False,
        "--with-healthcheck",
        help="Serve Prefect's worker health check: GET /health answers 200 while the worker "
        "polls (port: --healthcheck-port, else PREFECT_WORKER_WEBSERVER_PORT).",
    ),
    healthcheck_port: int = typer.Option(
        None, "--healthcheck-port", help="Port of the health check (127.0.0.1 by default)."
    ),
    run_once: bool = typer.Option(
        False, "--run-once", help="Start what is ready now, wait for it to end, and stop."
    ),
) -> None:
    """Start a pipedeploy worker (same as `prefect worker start --type pipedeploy`)."""
    import asyncio

    from prefect.settings import PREFECT_WORKER_WEBSERVER_PORT, temporary_settings

    async def serve() -> None:
        work_pool = pool or get_settings().default_pool
        worker = PipeDeployWorker(work_pool_name=work_pool, name=name, ram_capacity=ram_capacity)
        # SIGTERM (a service manager's stop) ends the worker like Ctrl-C: its teardown stops
        # the pods and publishes them as `down`.
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop_signal, main.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await worker.start(run_once=run_once, with_healthcheck=with_healthcheck)

    port = {PREFECT_WORKER_WEBSERVER_PORT: healthcheck_port} if healthcheck_port else {}
    try:
        # A bad setting or --ram-capacity is one line `error: ...`, like every command's.
        with temporary_settings(updates=port):
            asyncio.run(serve())
    except KeyboardInterrupt:
        pass


@deployment_app.command("ls")
def deployment_ls() -> None:
    """List deployments."""
    rows = [
        (d["name"], d["execution_rule"], d["mode"], d["status"])
        for d in make_sdk().list_deployments()
    ]
    print_table(("NAME", "TRIGGER", "MODE", "STATUS"), rows)


@deployment_app.command("get")
def deployment_get(name: str) -> None:
    """Show one deployment as JSON."""
    print_json(make_sdk().get_deployment(name))


@deployment_app.command("rm")
def deployment_rm(name: str) -> None:
    """Delete a deployment."""
    make_sdk().delete_deployment(name)
    typer.echo(f"Deleted {name}")


@deployment_app.command("logs")
def deployment_logs(name: str) -> None:
    """Print the output of a low-latency deployment's pod (start-up, import errors, crashes)."""
    for line in make_sdk().get_deployment_logs(name):
        typer.echo(line)


@executions_app.command("ls")
def executions_ls(
    deployment: str = typer.Option(None, "--deployment", help="Only this deployment's."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many (any number)."),
    scheduled: bool = typer.Option(
        False, "--scheduled", help="Also the runs a schedule has made ahead of time."
    ),
) -> None:
    """List executions: the most recently started first, then those waiting to start."""
    rows = [
        (
            e["execution_id"],
            e["deployment_name"] or "-",
            e["status"],
            e["start_time"] or f"(due {e['expected_start_time']})",
            e["message"] or "",
        )
        for e in make_sdk().list_pipeline_executions(deployment, limit, scheduled)
    ]
    print_table(("EXECUTION ID", "DEPLOYMENT", "STATUS", "STARTED", "MESSAGE"), rows)


@executions_app.command("get")
def executions_get(execution_id: str) -> None:
    """Show one execution as JSON (status, attempts, outputs)."""
    print_json(make_sdk().get_pipeline_execution(execution_id))


@executions_app.command("logs")
def executions_logs(execution_id: str) -> None:
    """Print the logs of one execution."""
    for line in make_sdk().get_pipeline_execution_logs(execution_id):
        typer.echo(f"{line['timestamp']} {line['level']:7} {line['message']}")


@executions_app.command("cancel")
def executions_cancel(
    execution_id: str,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until it has ended."),
) -> None:
    """Cancel an execution (as the Prefect UI's Cancel does) and show it as JSON."""
    print_json(make_sdk().cancel_pipeline_execution(execution_id, wait=wait))


@pool_app.command("ram-cap")
def pool_ram_cap(
    size: str = typer.Argument(None, help="New cap, like '16GiB'; omit to show the current one."),
    pool: str = typer.Option(None, "--pool", help="Work pool (default: the default pool)."),
    remove: bool = typer.Option(False, "--remove", help="Remove the cap."),
) -> None:
    """Show, set or remove the RAM all workers of a pool may hold together."""
    sdk = make_sdk()
    pool = pool or get_settings().default_pool
    if remove:
        sdk.set_pool_ram_cap(None, pool)
        typer.echo(f"No RAM cap on pool {pool!r}")
        return
    cap = sdk.set_pool_ram_cap(size, pool) if size else sdk.get_pool_ram_cap(pool)
    if cap is None:
        typer.echo(f"No RAM cap on pool {pool!r}; set one with `pipedeploy pool ram-cap 16GiB`")
    else:
        print_json(cap)
