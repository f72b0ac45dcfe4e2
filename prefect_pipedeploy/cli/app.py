"""The `pipedeploy` Typer app and its one error boundary.

For: `app` (every command module registers on it), `call` (runs an SDK verb: a PipeDeployError
prints as one line `error: ...` and exits 1, an unreachable Prefect API says how to start one)
and `fail`. Not for: commands (the other modules of `cli`).
"""

from __future__ import annotations

import json
from typing import Any

import typer

from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.sdk.client import PipeDeploy

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The `pipedeploy` command line: the local stack, the worker, deployments and executions.",
)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def make_sdk() -> Any:

    return PipeDeploy()


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an SDK verb; our errors become one line, connection problems a hint."""
    import httpx

    try:
        return fn(*args, **kwargs)
    except PipeDeployError as exc:
        fail(str(exc))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        fail(
            f"cannot reach the Prefect API ({exc}); start it with `pipedeploy up` "
            "or set PREFECT_API_URL"
        )
