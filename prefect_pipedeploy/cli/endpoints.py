"""The gateway's commands: `pipedeploy gateway`, `pipedeploy endpoint token NAME` and
`pipedeploy sdk-token create NAME | ls | revoke NAME`.

For: starting the endpoint gateway from the command line, rotating an endpoint token (also
how a deployment made with `prefect deploy` gets its first token), and the SDK tokens the
reference platform's client authenticates with at the gateway (`gateway.platform`). Not for:
logic of its own (`gateway`, `sdk.endpoints`, `prefect_api.sdk_tokens`).

    pipedeploy gateway --pool pipedeploy --pool other --host 127.0.0.1 --port 8080
    pipedeploy endpoint token score        # prints the new token once
    pipedeploy sdk-token create ci         # prints the new SDK token alone on its last line
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from prefect.client.orchestration import PrefectClient

from prefect_pipedeploy.cli.app import app, make_sdk, print_table
from prefect_pipedeploy.gateway.app import serve
from prefect_pipedeploy.prefect_api.sdk_tokens import (
    create_sdk_token,
    list_sdk_tokens,
    revoke_sdk_token,
)
from prefect_pipedeploy.settings import get_settings

endpoint_app = typer.Typer(no_args_is_help=True, help="Endpoint tokens: token.")
sdk_token_app = typer.Typer(
    no_args_is_help=True,
    help="SDK tokens of the reference platform's client (CraftAiSdk): create, ls, revoke.",
)
T = TypeVar("T")


def _with_client(action: Callable[[PrefectClient], Awaitable[T]]) -> T:
    async def run() -> T:
        async with make_sdk()._client() as client:
            return await action(client)

    return asyncio.run(run())


def gateway(
    pool: list[str] = typer.Option(
        None,
        "--pool",
        help="Work pool whose endpoint deployments to serve (repeatable; default: the "
        "default pool).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8080, "--port", help="Port to listen on."),
) -> None:
    """Serve endpoint deployments over HTTP: POST /endpoints/<path> (Ctrl-C stops it)."""
    serve(pool or [get_settings().default_pool], host, port)


@endpoint_app.command("token")
def token(
    name: str = typer.Argument(..., help="The deployment's name (or its endpoint path)."),
) -> None:
    """Make a new endpoint token and print it once; the previous token stops working."""
    rotated = make_sdk().generate_new_endpoint_token(name)
    typer.echo(
        f"New endpoint token of deployment {rotated['deployment_name']!r} "
        f"(POST /endpoints/{rotated['endpoint_url_path']}); it is shown only now, and the "
        "previous token no longer works:",
        err=True,
    )
    typer.echo(rotated["endpoint_token"])


@sdk_token_app.command("create")
def sdk_token_create(
    name: str = typer.Argument(..., help="A name for the token (who or what uses it)."),
) -> None:
    """Make an SDK token and print it once, alone on the last line (stored only as a hash)."""
    token = _with_client(lambda client: create_sdk_token(client, name))
    typer.echo(
        f"New SDK token {name!r}: give it to CraftAiSdk(sdk_token=..., environment_url=<gateway>,"
        " control_url=<gateway>); it is shown only now:",
        err=True,
    )
    typer.echo(token)


@sdk_token_app.command("ls")
def sdk_token_ls() -> None:
    """List the SDK tokens (names and creation times; the tokens themselves are not kept)."""
    tokens: list[dict[str, Any]] = _with_client(list_sdk_tokens)
    print_table(("NAME", "CREATED"), [(t["name"], t["created"]) for t in tokens])


@sdk_token_app.command("revoke")
def sdk_token_revoke(name: str = typer.Argument(..., help="The token's name.")) -> None:
    """Revoke an SDK token: it gets no new access token (those given last until they expire)."""
    _with_client(lambda client: revoke_sdk_token(client, name))
    typer.echo(f"Revoked SDK token {name!r}.")


app.command()(gateway)
app.add_typer(endpoint_app, name="endpoint")
app.add_typer(sdk_token_app, name="sdk-token")
