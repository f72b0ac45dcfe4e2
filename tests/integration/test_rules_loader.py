"""`engine.loader.load_deployment_pipeline`: a deployment's pull steps, then the one import, the
way an elastic run and a pod both load (pull steps resolve templates against the real API)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.responses import DeploymentResponse

from prefect_pipedeploy.engine.loader import load_deployment_pipeline
from prefect_pipedeploy.exceptions import PipelineLoadError

SET_DIR = "prefect.deployments.steps.set_working_directory"


def deployment(**fields: Any) -> DeploymentResponse:
    return DeploymentResponse(id=uuid.uuid4(), name="pipe", flow_id=uuid.uuid4(), **fields)


@pytest.fixture
def code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pipeline's folder; the test's working directory and sys.path are restored after it."""
    package = f"rules_loader_{uuid.uuid4().hex[:8]}"
    (tmp_path / "pipe.py").write_text("def run(x: int = 1) -> dict:\n    return {'y': x}\n")
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "flows.py").write_text(
        "from prefect import flow\n\n@flow(log_prints=True)\ndef run() -> dict:\n"
        "    return {'ok': True}\n"
    )
    monkeypatch.chdir(Path.cwd())
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "package_name").write_text(package)
    return tmp_path


@pytest.mark.anyio
async def test_pull_steps_then_import(prefect_api: str, code: Path) -> None:
    flow = await load_deployment_pipeline(
        deployment(entrypoint="pipe.py:run", pull_steps=[{SET_DIR: {"directory": str(code)}}])
    )
    assert flow.name == "run" and flow.log_prints is True and flow.fn() == {"y": 1}
    assert Path(os.getcwd()) == code.resolve() and sys.path[0] == os.getcwd()


@pytest.mark.anyio
async def test_a_module_path_entrypoint_resolves_where_the_pull_steps_went(
    prefect_api: str, code: Path
) -> None:
    package = (code / "package_name").read_text()
    flow = await load_deployment_pipeline(
        deployment(
            entrypoint=f"{package}.flows:run", pull_steps=[{SET_DIR: {"directory": str(code)}}]
        )
    )
    assert flow.log_prints is True and flow.fn() == {"ok": True}


@pytest.mark.anyio
async def test_without_pull_steps_it_runs_from_its_path(prefect_api: str, code: Path) -> None:
    flow = await load_deployment_pipeline(deployment(entrypoint="pipe.py:run", path=str(code)))
    assert flow.fn(x=3) == {"y": 3}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "deployment 'pipe' has no entrypoint"),
        (
            {"entrypoint": "pipe.py:run", "pull_steps": [{SET_DIR: {"directory": "/no/such"}}]},
            "deployment 'pipe': its pull steps failed .* its folder is not on this machine: "
            "create the deployment with a data store configured",
        ),
        (
            {
                "entrypoint": "pipe.py:run",
                "pull_steps": [{"prefect.deployments.steps.run_shell_script": {"script": "false"}}],
            },
            "deployment 'pipe': its pull steps failed .*; fix the deployment's pull steps",
        ),
        ({"entrypoint": "pipe.py:run", "path": "/no/such"}, "is not a directory"),
        ({"entrypoint": "pipe.py:nope"}, "pipe.py has no 'nope'"),
    ],
)
async def test_load_errors_name_the_deployment_or_pipeline(
    prefect_api: str, code: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(PipelineLoadError, match=message):
        await load_deployment_pipeline(deployment(**{"path": str(code), **fields}))
