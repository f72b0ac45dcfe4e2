"""Images for `runtime: docker` deployments: the project and a pipeline's requirements on top of a
base image that has Python.

For: `build_image` (what `pipedeploy image build` runs): it asks the base image for its Python
version, downloads wheels on this machine (prefect-pipedeploy, built from its source folder when
it is installed from one, else from the package index, and the requirements) for that Python and
Linux, renders `DOCKERFILE` into a build folder with them, and builds it with the Docker SDK.
Nothing is installed from the network inside the build: a container often cannot reach the
package index (TLS, proxies), the machine building the image can. `render_dockerfile` is the
Dockerfile, for a team that builds its images elsewhere. Not for: running containers (`docker`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from prefect_pipedeploy.exceptions import RuntimeStartError, SpecError

#: Where the image's virtual environment lives; its `bin` comes first on PATH, so `python` is
#: the environment's.
VENV = "/opt/pipedeploy"

DOCKERFILE = """\
# Rendered by `pipedeploy image build`: prefect-pipedeploy and a pipeline's requirements,
# installed from wheels downloaded beside this file (no network needed inside the build).
FROM {base}
COPY wheels /tmp/pipedeploy-wheels
RUN {python} -m venv {venv} \\
 && {venv}/bin/pip install --no-cache-dir --no-index --find-links /tmp/pipedeploy-wheels \\
    -r /tmp/pipedeploy-wheels/requirements.txt \\
 && rm -rf /tmp/pipedeploy-wheels
ENV PATH={venv}/bin:$PATH
"""


def render_dockerfile(base: str, python: str = "python3") -> str:
    """The Dockerfile of an image on `base` (whose Python is `python`)."""
    return DOCKERFILE.format(base=base, python=python, venv=VENV)


@dataclass(frozen=True)
class BasePython:
    """The Python of a base image: its version and glibc (for wheels' platform tags)."""

    version: str
    glibc: str


_PROBE = (
    "import json, platform, sys; "
    "print(json.dumps({'version': platform.python_version(), "
    "'glibc': platform.libc_ver()[1]}))"
)


def probe_base(client: object, base: str, python: str) -> BasePython:
    """Run the base image's `python` once to learn its version and glibc."""
    import docker

    try:
        output = client.containers.run(  # type: ignore[attr-defined]
            base, [python, "-c", _PROBE], remove=True, network_mode="none"
        )
    except docker.errors.ImageNotFound:
        raise SpecError(
            f"--base {base!r} is not on this machine's Docker engine; pull or build it first"
        ) from None
    except docker.errors.DockerException as exc:
        raise SpecError(
            f"--base {base!r} could not run {python!r} ({exc}); the base image needs Python 3 "
            "with venv (on Debian: python3 and python3-venv)"
        ) from exc
    found = json.loads(output.decode().strip().splitlines()[-1])
    return BasePython(found["version"], found["glibc"] or "2.17")


def project_source() -> Path | None:
    """The source folder prefect-pipedeploy is installed from (a checkout), if it is."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SpecError(f"{what} failed:\n{tail}")


def download_wheels(
    wheels: Path, requirements: list[str], python: BasePython, say: Callable[[str], None]
) -> None:
    """prefect-pipedeploy's wheel and every wheel `requirements` need, for `python` on Linux
    x86-64, into `wheels`; writes `wheels/requirements.txt` naming what to install."""
    wheels.mkdir(parents=True, exist_ok=True)
    source = project_source()
    if source is not None:
        say(f"Building prefect-pipedeploy's wheel from {source}")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                str(wheels),
                str(source),
            ],
            "building prefect-pipedeploy's wheel",
        )
        project = [str(next(wheels.glob("prefect_pipedeploy-*.whl")).name)]
    else:
        project = [f"prefect-pipedeploy=={metadata.version('prefect-pipedeploy')}"]
    wanted = [f"/tmp/pipedeploy-wheels/{p}" if p.endswith(".whl") else p for p in project]
    (wheels / "requirements.txt").write_text("\n".join([*wanted, *requirements]) + "\n")
    to_download = [str(wheels / p) if p.endswith(".whl") else p for p in project]
    say(f"Downloading wheels for Python {python.version} (glibc {python.glibc})")
    _pip_download(wheels, [*to_download, *requirements], python)
    # pip evaluates `python_full_version` markers with this machine's Python, not the
    # image's (e.g. redis needs async-timeout below 3.11.3): fetch what they add for it
    while extra := full_version_requirements(wheels, python.version):
        have = {p.name.split("-")[0].lower().replace("_", "-") for p in wheels.glob("*.whl")}
        missing = [r for r in extra if _name(r) not in have]
        if not missing:
            break
        _pip_download(wheels, missing, python)


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower().replace("_", "-")


def _pip_download(wheels: Path, requirements: list[str], python: BasePython) -> None:
    major, minor = python.glibc.split(".")[:2]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--dest",
            str(wheels),
            "--only-binary=:all:",
            "--python-version",
            python.version,
            "--implementation",
            "cp",
            "--platform",
            f"manylinux_{major}_{minor}_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "linux_x86_64",
            *requirements,
        ],
        "downloading the wheels (pip download)",
    )


def full_version_requirements(wheels: Path, version: str) -> list[str]:
    """The requirements of the wheels in `wheels` whose `python_full_version` marker holds for
    Python `version` (markerless, as `pip download` takes them)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    environment: dict[str, str] = {
        **{key: str(value) for key, value in default_environment().items()},
        "python_full_version": version,
        "python_version": ".".join(version.split(".")[:2]),
        "extra": "",
    }
    found = []
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            text = archive.read(names[0]).decode(errors="replace") if names else ""
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:") or "python_full_version" not in line:
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is not None and requirement.marker.evaluate(environment):
                requirement.marker = None
                found.append(str(requirement))
    return found


def read_requirements(path: Path | None) -> list[str]:
    """The requirement lines of a requirements file (comments and blanks dropped)."""
    if path is None:
        return []
    if not path.is_file():
        raise SpecError(f"--requirements {str(path)!r} is not a file")
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    for line in lines:
        if line.startswith("-"):
            raise SpecError(
                f"--requirements {str(path)!r}: option lines such as {line!r} are not "
                "supported; list one requirement per line"
            )
    return [line for line in lines if line]


def build_image(
    tag: str,
    base: str,
    requirements: Path | None = None,
    python: str = "python3",
    say: Callable[[str], None] = print,
) -> str:
    """Build image `tag`: `base` plus prefect-pipedeploy and `requirements`; returns its id."""
    import docker

    from prefect_pipedeploy.runtimes.docker import docker_client

    wanted = read_requirements(requirements)
    try:
        client = docker_client()
    except RuntimeStartError as exc:
        raise SpecError(str(exc).replace(", or use runtime: process", "")) from None
    found = probe_base(client, base, python)
    context = Path(tempfile.mkdtemp(prefix="pipedeploy-image-"))
    try:
        download_wheels(context / "wheels", wanted, found, say)
        (context / "Dockerfile").write_text(render_dockerfile(base, python))
        say(f"Building {tag} on {base}")
        try:
            image, _ = client.images.build(path=str(context), tag=tag, rm=True, forcerm=True)
        except docker.errors.BuildError as exc:
            lines = [str(item.get("stream", "")).rstrip() for item in exc.build_log]
            tail = "\n".join(line for line in lines if line)[-2000:]
            raise SpecError(f"building image {tag!r} failed: {exc}\n{tail}") from None
        return str(image.id)
    finally:
        shutil.rmtree(context, ignore_errors=True)
