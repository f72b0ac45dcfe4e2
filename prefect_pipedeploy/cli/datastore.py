"""`pipedeploy datastore ...`: the data store from the command line.

For: listing, uploading, downloading, describing and deleting data-store objects, each command
one SDK verb; errors print one line `error: ...` and exit 1, like every `pipedeploy` command.
Not for: logic of its own (`sdk.datastore` and `datastore` have it).

    pipedeploy datastore ls [PREFIX]
    pipedeploy datastore put LOCAL_PATH OBJECT_PATH
    pipedeploy datastore get OBJECT_PATH LOCAL_PATH       # LOCAL_PATH '-' writes to stdout
    pipedeploy datastore rm OBJECT_PATH
    pipedeploy datastore info OBJECT_PATH
    pipedeploy datastore --store pipedeploy-s3-data-store/prod ls    # another saved store

The store is PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE's unless `--store` names one.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from prefect_pipedeploy.cli.app import app, make_sdk
from prefect_pipedeploy.sdk import PipeDeploy
from prefect_pipedeploy.settings import env_name

datastore_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The data store: ls, put, get, rm, info.",
)


@datastore_app.callback()
def _choose_store(
    ctx: typer.Context,
    store: str = typer.Option(
        None,
        "--store",
        help="Saved data store block '<block-type-slug>/<name>' (default: "
        f"{env_name('data_store')}).",
    ),
) -> None:
    ctx.obj = store
    # Loading the block emits Prefect's "block loaded" event; at exit Prefect's events worker
    # sends it and warns "Still processing items" on stderr. The event still goes; the notice
    # is noise in a one-line command, so keep that logger to errors.
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)


def _verbs(ctx: typer.Context) -> PipeDeploy:
    """The SDK, on `--store`'s store when given."""
    sdk = make_sdk()
    if ctx.obj:
        sdk.data_store = ctx.obj
    return sdk


@datastore_app.command("ls")
def ls(
    ctx: typer.Context,
    prefix: str = typer.Argument("", help="Only objects whose path starts with this."),
) -> None:
    """List objects: size in bytes, last modified (UTC), path."""
    for info in _verbs(ctx).list_data_store_objects(prefix):
        typer.echo(f"{info['size']:>12}  {info['last_modified']}  {info['key']}")


@datastore_app.command("put")
def put(ctx: typer.Context, local_path: Path, object_path: str) -> None:
    """Upload a local file to OBJECT_PATH, replacing any object there."""
    info = _verbs(ctx).upload_data_store_object(str(local_path), object_path)
    typer.echo(f"Uploaded {local_path} -> {info['key']} ({info['size']} bytes)")


@datastore_app.command("get")
def get(ctx: typer.Context, object_path: str, local_path: str) -> None:
    """Download OBJECT_PATH to LOCAL_PATH ('-' for stdout)."""
    if local_path == "-":
        _verbs(ctx).download_data_store_object(object_path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    info = _verbs(ctx).download_data_store_object(object_path, local_path)
    typer.echo(f"Downloaded {info['key']} -> {local_path} ({info['size']} bytes)")


@datastore_app.command("rm")
def rm(ctx: typer.Context, object_path: str) -> None:
    """Delete one object."""
    _verbs(ctx).delete_data_store_object(object_path)
    typer.echo(f"Deleted {object_path}")


@datastore_app.command("info")
def info(ctx: typer.Context, object_path: str) -> None:
    """Show one object's path, size, last modification time and sha256 as JSON."""
    typer.echo(json.dumps(_verbs(ctx).get_data_store_object_information(object_path), indent=2))


app.add_typer(datastore_app, name="datastore")
