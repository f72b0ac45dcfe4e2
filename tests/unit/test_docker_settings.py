"""The docker runtime's pure parts: its settings in the deployment spec, what of the worker's
environment a container gets, its mounts, and the image builder's Dockerfile and
requirements file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.exceptions import SpecError
from prefect_pipedeploy.runtimes.docker import HOST_ONLY_VARIABLES, _volumes
from prefect_pipedeploy.runtimes.images import VENV, read_requirements, render_dockerfile
from prefect_pipedeploy.spec import DockerSettings, build_spec, spec_from_job_variables

IMAGE = {"image": "score:1"}


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"runtime": "docker"}, "docker: runtime docker needs docker settings with an image"),
        ({"docker": IMAGE}, "docker settings are only for runtime docker"),
        ({"runtime": "docker", "docker": {"image": ""}}, "docker.image"),
        ({"runtime": "docker", "docker": {}}, "docker.image"),
        (
            {"runtime": "docker", "docker": {**IMAGE, "volumes": ["/data"]}},
            "'/data' is not a mount; write it as 'host-path:/container/path'",
        ),
        (
            {"runtime": "docker", "docker": {**IMAGE, "pull_policy": "Sometimes"}},
            "docker.pull_policy",
        ),
        ({"runtime": "kubernetes"}, "runtime"),
    ],
)
def test_bad_docker_settings_are_refused_naming_the_field(
    values: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SpecError) as raised:
        build_spec(**values)
    assert problem in str(raised.value)


def test_docker_settings_round_trip_through_job_variables() -> None:
    spec = build_spec(
        runtime="docker",
        docker={
            "image": "score:1",
            "volumes": ["/data:/data:ro", "models:/models"],
            "pull_policy": "Never",
            "env": {"MODEL": "v2"},
        },
    )
    assert spec_from_job_variables(spec.job_variables()) == spec
    assert spec.docker is not None and spec.docker.network_mode == "host"
    assert build_spec().runtime == "process" and build_spec().docker is None


def test_a_container_gets_the_worker_environment_but_its_machine_paths() -> None:
    for name in ("PATH", "HOME", "VIRTUAL_ENV", "PYTHONPATH", "DOCKER_HOST"):
        assert name in HOST_ONLY_VARIABLES
    for name in ("PREFECT_API_URL", "PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE", "AWS_REGION"):
        assert name not in HOST_ONLY_VARIABLES


def test_mounts_resolve_host_paths_and_add_the_run_directory(tmp_path: Path) -> None:
    settings = DockerSettings(image="x", volumes=[f"{tmp_path}/a:/a:ro", f"{tmp_path}/b:/b"])
    mounts = _volumes(settings, tmp_path / "run")
    assert mounts == {
        str(tmp_path / "a"): {"bind": "/a", "mode": "ro"},
        str(tmp_path / "b"): {"bind": "/b", "mode": "rw"},
        str(tmp_path / "run"): {"bind": str(tmp_path / "run"), "mode": "rw"},
    }


def test_the_dockerfile_installs_offline_into_a_venv_first_on_path() -> None:
    text = render_dockerfile("python:3.11-slim")
    assert text.splitlines()[2] == "FROM python:3.11-slim"
    assert "--no-index --find-links /tmp/pipedeploy-wheels" in text
    assert f"ENV PATH={VENV}/bin:$PATH" in text
    assert "/usr/bin/python3 -m venv" in render_dockerfile("base", "/usr/bin/python3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "six==1.16.0\n# a comment\n\nnumpy>=1.26  # pinned below 2\n",
            ["six==1.16.0", "numpy>=1.26"],
        ),
        ("", []),
    ],
)
def test_requirements_files_are_read_line_by_line(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    assert read_requirements(path) == expected
    assert read_requirements(None) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [("-r other.txt\n", "option lines such as '-r other.txt'"), (None, "is not a file")],
)
def test_requirements_files_the_builder_cannot_use_are_refused(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "requirements.txt"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SpecError, match=problem):
        read_requirements(path)
