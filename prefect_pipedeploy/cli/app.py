"""The `pipedeploy` Typer app and its one error boundary.

For: `app` (every command module registers on it) and the boundary every command runs inside
(`ErrorBoundary`): a PipeDeployError prints as one line `error: <message>` and exits 1; an
unreachable Prefect API says which URL was tried and how to start one; the API refusing a
request says so; anything else prints one line too (PREFECT_DEBUG_MODE=1 shows its traceback).
Never a traceback otherwise. Commands stop themselves with `fail(message)`, which goes through
the same boundary. Not for: commands (the other modules of `cli`).
"""

from __future__ import annotations

import json
import os
from typing import Any, NoReturn

import httpx
import typer
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL, PREFECT_DEBUG_MODE
from typer.core import TyperGroup

from prefect_pipedeploy.exceptions import PipeDeployError
from prefect_pipedeploy.sdk.client import PipeDeploy


class ErrorBoundary(TyperGroup):
    """The `pipedeploy` group: every command (and sub-command) is invoked inside it, so each
    error is printed here, once, the same way."""

    def invoke(self, ctx: Any) -> Any:  # a Typer (click) context
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # Typer's own signals (Exit, Abort, usage errors) carry an exit code: Typer prints
            # them. EOFError (end of a prompt's input) Typer turns into Abort.
            if hasattr(exc, "exit_code") or isinstance(exc, EOFError):
                raise
            if PREFECT_DEBUG_MODE.value():
                raise
            typer.secho(f"error: {error_message(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None


def error_message(exc: Exception) -> str:
    """The one line `pipedeploy` prints for an error (after `error: `)."""
    if isinstance(exc, PipeDeployError):
        return str(exc)
    if isinstance(exc, httpx.TransportError):
        return (
            f"cannot reach the Prefect API at {_api_url(exc)} ({type(exc).__name__}: {exc}); "
            "start one with `pipedeploy up`, or point PREFECT_API_URL at a running server"
        )
    if isinstance(exc, PrefectHTTPStatusError):
        return (
            f"the Prefect API at {_api_url(exc)} refused a request: "
            f"{exc.response.status_code} {_detail(exc.response)}"
        )
    return (
        f"unexpected {type(exc).__name__}: {exc} (a bug in prefect-pipedeploy: please report "
        "it; set PREFECT_DEBUG_MODE=1 to see its traceback)"
    )


app = typer.Typer(
    cls=ErrorBoundary,
    no_args_is_help=True,
    add_completion=False,
    help="The `pipedeploy` command line: the local stack, the worker, deployments and executions.",
)


@app.callback()
def use_local_stack(ctx: typer.Context) -> None:
    """Every command but `up`: with no Prefect API configured (PREFECT_API_URL in the
    environment or the profile), use the stack a running `pipedeploy up` recorded (this
    project's `.pipedeploy`, else PREFECT_HOME), and say so on stderr; its gateway and data
    store too, unless set. Without one, Prefect's own rule applies (a temporary server)."""
    if ctx.invoked_subcommand == "up" or PREFECT_API_URL.value():
        return
    from prefect.settings import temporary_settings

    from prefect_pipedeploy.settings import env_name, get_settings
    from prefect_pipedeploy.stack import find_running_stack

    settings = get_settings()
    stack = find_running_stack(settings.home)
    if stack is None:
        return
    typer.secho(f"Using {stack.describe()}", err=True, fg=typer.colors.BLUE)
    found = {
        "PREFECT_API_URL": stack.api_url,
        env_name("gateway_url"): settings.gateway_url or stack.gateway_url,
        env_name("data_store"): settings.data_store or stack.data_store,
    }
    if "default_pool" not in settings.model_fields_set:
        found[env_name("default_pool")] = stack.pool
    os.environ.update(found)  # what this process reads and what its children (pods) inherit
    ctx.with_resource(temporary_settings(updates={PREFECT_API_URL: stack.api_url}))


def fail(message: str) -> NoReturn:
    """Stop the command: the boundary prints `error: <message>` and exits 1."""
    raise PipeDeployError(message)


def _api_url(exc: httpx.HTTPError) -> str:
    """The API the failed request went to: PREFECT_API_URL, else the request's own origin."""
    configured = PREFECT_API_URL.value()
    if configured:
        return str(configured)
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without a request
        return "(no PREFECT_API_URL set)"
    return f"{url.scheme}://{url.netloc.decode()}"


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.reason_phrase)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def print_table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """Rows under a header row, each column as wide as its widest cell (the last one free)."""
    cells = [tuple(str(c) for c in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    for row in cells:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        typer.echo(f"{line}  {row[-1]}".rstrip())


def make_sdk() -> PipeDeploy:
    return PipeDeploy()
