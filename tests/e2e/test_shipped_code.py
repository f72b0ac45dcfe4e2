"""Code shipped through the data store, end to end: a deployment's folder is packed by
create_deployment, and a worker that has another working directory and another home, and no
access to the folder (removed once deployed, as on a second machine), runs it elastic and low
latency from the archive it fetches and verifies. An update ships new code and re-creates the
pod; an archive changed or deleted in the store fails the run saying so."""

from __future__ import annotations

import io
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.datastore.configured import load_data_store
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import unique, wait_until_up
from tests.support.processes import start_worker

PIPELINE = """
import os

from shipped_helpers.values import VALUE

COUNT = 0


def shipped(tag: str = "") -> dict:
    global COUNT
    COUNT += 1
    return {"value": VALUE, "cwd": os.getcwd(), "count": COUNT, "tag": tag}
"""


def write_project(root: Path, value: str) -> str:
    """A pipeline folder whose pipeline imports a package of its own; its entrypoint."""
    (root / "shipped_helpers").mkdir(parents=True)
    (root / "shipped_helpers" / "__init__.py").write_text("")
    (root / "shipped_helpers" / "values.py").write_text(f"VALUE = {value!r}\n")
    (root / "pipe.py").write_text(PIPELINE)
    (root / "data").mkdir()
    (root / "data" / "ignored.csv").write_text("a,b\n")
    (root / ".pipedeployignore").write_text("data/\n")
    return f"{root / 'pipe.py'}:shipped"


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second machine's own disk: a home and a working directory of its own."""
    return tmp_path_factory.mktemp("second-machine")


@pytest.fixture(scope="module")
def remote_worker(
    pool: str, data_store: str, machine: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChildProcess]:
    (machine / "home").mkdir()
    (machine / "cwd").mkdir()
    home = str(machine / "home")
    child = start_worker(
        pool,
        tmp_path_factory.mktemp("worker-logs"),
        env={"HOME": home, "PREFECT_HOME": home},
        cwd=machine / "cwd",
    )
    yield child
    child.stop()


def code_cache(machine: Path) -> Path:
    return machine / "home" / "pipedeploy" / "code"


def test_elastic_and_low_latency_runs_of_shipped_code_on_a_worker_without_the_folder(
    sdk: PipeDeploy, data_store: str, remote_worker: ChildProcess, machine: Path, tmp_path: Path
) -> None:
    pipeline = write_project(tmp_path / "project", f"v1-{uuid.uuid4().hex[:6]}")
    elastic, low_latency = unique("shipped-elastic"), unique("shipped-ll")
    created = sdk.create_deployment(pipeline, elastic, mode="elastic")
    sdk.create_deployment(pipeline, low_latency, mode="low_latency")
    code = created["code"]
    assert code["data_store"] == data_store
    assert code["key"] == f"code/{code['sha256']}.tar.gz"
    assert created["entrypoint"] == "pipe.py:shipped"
    shutil.rmtree(tmp_path / "project")  # as on any other machine: the folder is not there

    run = sdk.run_deployment(elastic, {"tag": "elastic"}, timeout_s=120)
    assert run["status"] == "Succeeded", run
    assert run["outputs"]["value"].startswith("v1-")
    assert run["outputs"]["cwd"] == str(code_cache(machine) / code["sha256"])

    wait_until_up(sdk, low_latency, 120)
    first = sdk.run_deployment(low_latency, {"tag": "a"}, timeout_s=60)
    second = sdk.run_deployment(low_latency, {"tag": "b"}, timeout_s=60)
    assert first["status"] == second["status"] == "Succeeded", (first, second)
    assert first["outputs"]["value"] == run["outputs"]["value"]
    # one pod imported the shipped code once: its module state carries over
    assert [first["outputs"]["count"], second["outputs"]["count"]] == [1, 2]
    # both deployments share one unpacked copy; no work folder is left beside it
    assert [p.name for p in code_cache(machine).iterdir()] == [code["sha256"]]
    assert not (code_cache(machine) / code["sha256"] / "data").exists()  # .pipedeployignore


def test_new_code_from_update_deployment_reaches_a_new_pod(
    sdk: PipeDeploy, data_store: str, remote_worker: ChildProcess, tmp_path: Path
) -> None:
    name = unique("shipped-update")
    created = sdk.create_deployment(
        write_project(tmp_path / "one", "first"), name, mode="low_latency"
    )
    wait_until_up(sdk, name, 120)
    assert sdk.run_deployment(name, timeout_s=60)["outputs"]["value"] == "first"

    updated = sdk.update_deployment(name, pipeline=write_project(tmp_path / "two", "second"))
    assert updated["code"]["sha256"] != created["code"]["sha256"]
    shutil.rmtree(tmp_path / "two")

    def new_code_runs() -> dict:
        return sdk.run_deployment(name, timeout_s=60)["outputs"]

    outputs = eventually(
        new_code_runs,
        120,
        2,
        until=lambda outputs: outputs["value"] == "second",
        what="a run of the new code",
    )
    assert outputs["count"] == 1  # a new pod: the old one's module state is gone


def test_an_archive_changed_or_deleted_in_the_store_fails_the_run_saying_so(
    sdk: PipeDeploy, data_store: str, remote_worker: ChildProcess, machine: Path, tmp_path: Path
) -> None:
    name = unique("shipped-tampered")
    created = sdk.create_deployment(
        write_project(tmp_path / "project", f"t-{uuid.uuid4().hex}"), name, mode="elastic"
    )
    key, sha256 = created["code"]["key"], created["code"]["sha256"]
    store = load_data_store(data_store)
    store.upload(io.BytesIO(b"not the archive"), key)

    changed = sdk.run_deployment(name, timeout_s=120)
    assert changed["status"] == "Failed", changed
    assert f"not the {sha256} the deployment recorded" in changed["message"]
    assert "update_deployment" in changed["message"]

    store.delete_object(key)
    missing = sdk.run_deployment(name, timeout_s=120)
    assert missing["status"] == "Failed", missing
    assert f"code archive {key!r} is missing from data store" in missing["message"]
    # nothing of the refused archive stays in the cache
    assert all(re.fullmatch(r"[0-9a-f]{64}", p.name) for p in code_cache(machine).iterdir())
    assert not (code_cache(machine) / sha256).exists()
