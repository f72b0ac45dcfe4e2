"""`pipedeploy image build|dockerfile`: images for `runtime: docker` deployments.

For: building an image with prefect-pipedeploy and a pipeline's requirements on a base image that
has Python (`runtimes.images`), or printing the Dockerfile it renders. Not for: logic of its own.

    pipedeploy image build --requirements requirements.txt --base python:3.11-slim --tag score:1
    pipedeploy image dockerfile --base python:3.11-slim
"""

from __future__ import annotations

from pathlib import Path

import typer

from prefect_pipedeploy.cli.app import app
from prefect_pipedeploy.runtimes.images import build_image, render_dockerfile

image_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Images for runtime docker: build, dockerfile.",
)
app.add_typer(image_app, name="image")

BASE_HELP = "A base image with Python 3 and its venv module (e.g. python:3.11-slim)."


@image_app.command("build")
def image_build(
    tag: str = typer.Option(..., "--tag", help="The image's name, e.g. score-model:1.2."),
    base: str = typer.Option("python:3.11-slim", "--base", help=BASE_HELP),
    requirements: Path | None = typer.Option(
        None, "--requirements", help="The pipeline's requirements file (one per line)."
    ),
    python: str = typer.Option("python3", "--python", help="The base image's Python command."),
) -> None:
    """Build an image: the base, prefect-pipedeploy and the requirements (wheels downloaded on
    this machine, installed offline in the build)."""
    image_id = build_image(
        tag, base, requirements, python, say=lambda line: typer.echo(line, err=True)
    )
    typer.echo(
        f"Built {tag} ({image_id}); use it with runtime='docker', docker={{'image': {tag!r}}}"
    )


@image_app.command("dockerfile")
def image_dockerfile(
    base: str = typer.Option("python:3.11-slim", "--base", help=BASE_HELP),
    python: str = typer.Option("python3", "--python", help="The base image's Python command."),
) -> None:
    """Print the Dockerfile `build` renders (put the wheels beside it, in `wheels/`)."""
    typer.echo(render_dockerfile(base, python), nl=False)
