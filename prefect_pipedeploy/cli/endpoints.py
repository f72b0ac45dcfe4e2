"""The gateway's commands: `pipedeploy gateway` and `pipedeploy endpoint token NAME`.

For: starting the endpoint gateway from the command line, and rotating an endpoint token (also
how a deployment made with `prefect deploy` gets its first token). Not for: logic of its own (`gateway`, `sdk.endpoints`).

    pipedeploy gateway --pool pipedeploy --pool other --host 127.0.0.1 --port 8080
    pipedeploy endpoint token score        # prints the new token once
"""

from __future__ import annotations

import typer

from prefect_pipedeploy.cli.app import app, make_sdk
from prefect_pipedeploy.gateway.app import serve
from prefect_pipedeploy.settings import get_settings

endpoint_app = typer.Typer(no_args_is_help=True, help="Endpoint tokens: token.")


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


app.command()(gateway)
app.add_typer(endpoint_app, name="endpoint")
