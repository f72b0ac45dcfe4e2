"""The Docker engine and images of the docker runtime's tests, built on this machine and kept.

For: `docker_client_or_skip` (the engine's client; no engine: a skip saying why, and under CI,
where `.ci/run` starts one, a failure), `python_image` (Debian bookworm with Python, from
Debian's packages: `debootstrap` then `docker import`, built once per machine and kept) and
`project_image` (that plus this checkout of prefect-pipedeploy and its dependencies, through
`pipedeploy image build`'s own code; kept per content of the checkout, older ones removed).
Not for: the runtime itself (`prefect_pipedeploy.runtimes.docker`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.exceptions import RuntimeStartError
from prefect_pipedeploy.runtimes.docker import docker_client
from prefect_pipedeploy.runtimes.images import build_image, project_source

PYTHON_IMAGE = "pipedeploy-test-python:bookworm"
PROJECT_REPOSITORY = "pipedeploy-test"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def docker_client_or_skip() -> Any:
    try:
        return docker_client()
    except RuntimeStartError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI starts a Docker engine (.ci/run), and none answers: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


def _has_image(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def python_image(client: Any) -> str:
    """Debian bookworm with python3 and python3-venv, as an image (built once per machine:
    about a minute, most of it debootstrap)."""
    if _has_image(client, PYTHON_IMAGE):
        return PYTHON_IMAGE
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing: `apt-get install debootstrap` (.ci/run does)")
    root = Path(tempfile.mkdtemp(prefix="pipedeploy-rootfs-"))
    try:
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv",
                "bookworm",
                str(root),
                DEBIAN_MIRROR,
            ],
            check=True,
            capture_output=True,
        )
        tarball = root.with_suffix(".tar")
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        repository, tag = PYTHON_IMAGE.split(":")
        client.api.import_image_from_file(str(tarball), repository=repository, tag=tag)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        root.with_suffix(".tar").unlink(missing_ok=True)
    return PYTHON_IMAGE


def checkout_digest() -> str:
    """A digest of what an image of this checkout contains: the package's files and its
    pyproject.toml."""
    source = project_source()
    assert source is not None, "the tests run from a checkout"
    digest = hashlib.sha256()
    files = [source / "pyproject.toml", *sorted((source / "prefect_pipedeploy").rglob("*.py"))]
    for path in files:
        digest.update(str(path.relative_to(source)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def project_image(client: Any) -> str:
    """`python_image` plus this checkout of prefect-pipedeploy (`pipedeploy image build`),
    kept while the checkout is unchanged; images of older checkouts are removed."""
    tag = f"{PROJECT_REPOSITORY}:{checkout_digest()}"
    if _has_image(client, tag):
        return tag
    for image in client.images.list(name=PROJECT_REPOSITORY):
        for old in image.tags:
            client.images.remove(old, force=True)
    client.images.prune(filters={"dangling": True})  # layers of failed or replaced builds
    build_image(tag, python_image(client), say=lambda line: None)
    return tag
