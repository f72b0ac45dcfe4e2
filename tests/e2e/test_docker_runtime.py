"""The docker runtime end to end, on this machine's real Docker engine: elastic executions of
shipped code in containers of an image built here (`tests/support/docker_images.py`), a
low-latency pod in one long-lived container (module state kept between runs, re-created after an
out-of-memory kill, removed with its deployment), the RAM request as the container's memory
limit, images with different versions of one package side by side (`pipedeploy image build`),
the errors that stop a container (an image that is not there, an engine that does not
answer) failing the run while the worker goes on, and a container whose worker was killed,
adopted by the next worker and removed once it ended."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.datastore.configured import load_data_store
from prefect_pipedeploy.runtimes.docker import LABEL, WORKER_LABEL
from prefect_pipedeploy.stack import ChildProcess
from tests.support.docker_images import docker_client_or_skip, project_image
from tests.support.eventually import eventually
from tests.support.executions import eventual_log_messages, unique, wait_until_up
from tests.support.processes import start_worker

PIPELINE = """
import os
import sys

import six

from docker_helpers import GREETING


def in_container(size_mib: int = 0) -> dict:
    print(f"{GREETING} from pid {os.getpid()}")
    hold = bytearray(size_mib * 1024 * 1024)  # touched: resident
    for i in range(0, len(hold), 4096):
        hold[i] = 1
    return {
        "in_container": os.path.exists("/.dockerenv"),
        "prefix": sys.prefix,
        "env": os.environ.get("MODEL_NAME"),
        "six": six.__version__,
        "greeting": GREETING,
    }
"""


POD_PIPELINE = """
import os

CALLS = []  # module state: kept between the runs of one pod


def count(size_mib: int = 0) -> dict:
    CALLS.append(1)
    hold = bytearray(size_mib * 1024 * 1024)  # touched: resident
    for i in range(0, len(hold), 4096):
        hold[i] = 1
    print(f"call {len(CALLS)} in pid {os.getpid()}")
    return {
        "count": len(CALLS),
        "in_container": os.path.exists("/.dockerenv"),
        "pid": os.getpid(),
    }
"""


def write_project(root: Path) -> str:
    root.mkdir(parents=True)
    (root / "docker_helpers.py").write_text(f"GREETING = 'hello-{uuid.uuid4().hex[:6]}'\n")
    (root / "pipe.py").write_text(PIPELINE)
    return f"{root / 'pipe.py'}:in_container"


@pytest.fixture(scope="module")
def docker() -> Any:
    return docker_client_or_skip()


@pytest.fixture(scope="module")
def image(docker: Any) -> str:
    return project_image(docker)


@pytest.fixture(scope="module")
def store_mount(data_store: str) -> str:
    """The local data store's folder, mounted at the same path: the containers fetch the
    shipped code from it as the worker's processes do."""
    root = str(load_data_store(data_store).root)  # type: ignore[attr-defined]
    return f"{root}:{root}"


@pytest.fixture(scope="module")
def worker(
    pool: str, data_store: str, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChildProcess]:
    child = start_worker(pool, tmp_path_factory.mktemp("worker-logs"))
    yield child
    child.stop()


def docker_settings(image: str, store_mount: str, **more: Any) -> dict[str, Any]:
    return {"image": image, "volumes": [store_mount], "pull_policy": "Never", **more}


def deploy_in_docker(
    sdk: PipeDeploy, pipeline: str, image: str, store_mount: str, **settings: Any
) -> str:
    """A deployment of `pipeline` in containers of `image` (elastic unless `mode` says;
    `docker_env`: the containers' variables); its unique name."""
    name = unique("docker")
    docker = docker_settings(image, store_mount, env=settings.pop("docker_env", {}))
    settings.setdefault("mode", "elastic")
    sdk.create_deployment(pipeline, name, runtime="docker", docker=docker, **settings)
    return name


def leftover_containers(docker: Any) -> list[Any]:
    # sparse: as listed, without inspecting each (one removed meanwhile is not an error)
    return docker.containers.list(all=True, filters={"label": LABEL}, sparse=True)


def test_an_elastic_execution_runs_shipped_code_in_a_container_of_its_image(
    sdk: PipeDeploy,
    worker: ChildProcess,
    docker: Any,
    image: str,
    store_mount: str,
    tmp_path: Path,
) -> None:
    pipeline = write_project(tmp_path / "project")
    name = deploy_in_docker(sdk, pipeline, image, store_mount, docker_env={"MODEL_NAME": "iris-v2"})
    run = sdk.run_deployment(name, timeout_s=180)
    assert run["status"] == "Succeeded", run["message"]
    outputs = run["outputs"]
    assert outputs["in_container"] is True
    assert outputs["prefix"] == "/opt/pipedeploy"  # the image's Python, not the worker's
    assert outputs["env"] == "iris-v2"
    messages = eventual_log_messages(sdk, run["execution_id"])
    assert any(m.startswith(f"{outputs['greeting']} from pid") for m in messages), messages
    # one container per execution, removed when it ended
    eventually(lambda: leftover_containers(docker), 30, until=lambda left: not left)


def test_an_execution_over_its_ram_request_is_stopped_by_its_container_limit(
    sdk: PipeDeploy,
    worker: ChildProcess,
    image: str,
    store_mount: str,
    tmp_path: Path,
    docker: Any,
) -> None:
    pipeline = write_project(tmp_path / "project")
    name = deploy_in_docker(sdk, pipeline, image, store_mount, ram_request="256MiB", max_retries=0)
    run = sdk.run_deployment(name, {"size_mib": 600}, timeout_s=180)
    assert run["status"] != "Succeeded", run
    assert "exceeded its RAM request of 256MiB" in (run["message"] or ""), run
    eventually(lambda: leftover_containers(docker), 30, until=lambda left: not left)


def test_a_missing_image_fails_the_run_saying_so_and_the_worker_goes_on(
    sdk: PipeDeploy, worker: ChildProcess, image: str, store_mount: str, tmp_path: Path
) -> None:
    pipeline = write_project(tmp_path / "project")
    missing = deploy_in_docker(sdk, pipeline, "pipedeploy-no-such-image:0", store_mount)
    fine = deploy_in_docker(sdk, pipeline, image, store_mount)
    failed = sdk.run_deployment(missing, timeout_s=120)
    assert failed["status"] == "Failed", failed
    assert "'pipedeploy-no-such-image:0' is not on this machine's Docker engine" in (
        failed["message"] or ""
    )
    assert sdk.run_deployment(fine, timeout_s=180)["status"] == "Succeeded"


def test_an_unreachable_engine_fails_the_run_naming_it(
    sdk: PipeDeploy, data_store: str, image: str, store_mount: str, tmp_path: Path
) -> None:
    pool = unique("no-engine")
    own = PipeDeploy(work_pool_name=pool)
    name = deploy_in_docker(own, write_project(tmp_path / "project"), image, store_mount)
    socket = tmp_path / "no-engine.sock"
    child = start_worker(pool, tmp_path, env={"DOCKER_HOST": f"unix://{socket}"})
    try:
        failed = own.run_deployment(name, timeout_s=120)
    finally:
        child.stop()
    assert failed["status"] == "Failed", failed
    message = failed["message"] or ""
    assert f"cannot reach the Docker engine at unix://{socket}" in message
    assert "use runtime: process" in message


HELD_PIPELINE = """
import os
import time


def held(gate: str) -> dict:
    deadline = time.monotonic() + 300
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {"released": os.path.exists(gate)}
"""


def containers_of_worker(docker: Any, worker_pid: int) -> list[Any]:
    """The runtime containers the worker with `worker_pid` started, running or ended."""
    filters = {"label": [LABEL, f"{WORKER_LABEL}={worker_pid}"]}
    return docker.containers.list(all=True, filters=filters, sparse=True)


def test_a_container_a_killed_worker_left_is_adopted_then_removed_once_it_ends(
    data_store: str, docker: Any, image: str, store_mount: str, tmp_path: Path
) -> None:
    """Fault, with an execution in flight: the worker that started an elastic execution's
    container is killed outright. The next worker on the machine adopts the container's process
    (its RAM counted until it ends), the execution finishes its run, and the ended container,
    which only its dead worker would have removed, is removed once it ended. Before: it stayed,
    exited, until yet another worker started (the sweep ran at a worker's start only)."""
    pool = unique("adopt-docker")
    own = PipeDeploy(work_pool_name=pool)
    (tmp_path / "project").mkdir()
    pipeline = tmp_path / "project" / "held.py"
    pipeline.write_text(HELD_PIPELINE)
    name = deploy_in_docker(own, f"{pipeline}:held", image, store_mount, max_retries=0)
    gate = Path(store_mount.split(":")[0]) / f"gate-{uuid.uuid4().hex}"  # seen in the container
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = start_worker(pool, tmp_path / "first")
    second = None
    try:
        execution = own.run_deployment(name, {"gate": str(gate)}, wait_for_completion=False)
        execution_id = execution["execution_id"]
        eventually(
            lambda: own.get_pipeline_execution(execution_id)["status"],
            180,
            until=lambda status: status == "Running",
        )
        assert len(containers_of_worker(docker, first.popen.pid)) == 1
        os.kill(first.popen.pid, signal.SIGKILL)
        first.popen.wait(10)
        second = start_worker(pool, tmp_path / "second")
        log = second.log_path
        eventually(lambda: "Adopted the elastic process" in log.read_text(), 60, until=bool)
        gate.touch()
        run = eventually(
            lambda: own.get_pipeline_execution(execution_id),
            120,
            until=lambda e: e["status"] not in ("Pending", "Running"),
        )
        assert run["status"] == "Succeeded", run
        assert own.retrieve_pipeline_execution_outputs(execution_id)["outputs"] == {
            "released": True
        }
        # removed while the adopting worker runs, not at some later worker's start
        eventually(
            lambda: containers_of_worker(docker, first.popen.pid), 60, until=lambda left: not left
        )
    finally:
        first.stop()
        if second is not None:
            second.stop()
        gate.unlink(missing_ok=True)


def test_two_images_with_different_versions_of_one_package_serve_side_by_side(
    sdk: PipeDeploy,
    worker: ChildProcess,
    image: str,
    store_mount: str,
    tmp_path: Path,
    docker: Any,
) -> None:
    pipeline = write_project(tmp_path / "project")
    versions: dict[str, str] = {}
    tags = []
    try:
        for version in ("1.16.0", "1.17.0"):
            requirements = tmp_path / f"requirements-{version}.txt"
            requirements.write_text(f"six=={version}\n")
            tag = f"pipedeploy-test-six:{version}-{uuid.uuid4().hex[:6]}"
            built = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "prefect_pipedeploy.cli",
                    "image",
                    "build",
                    "--requirements",
                    str(requirements),
                    "--base",
                    image,
                    "--python",
                    "/usr/bin/python3",
                    "--tag",
                    tag,
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert built.returncode == 0, built.stderr[-3000:]
            assert built.stdout.strip().splitlines()[-1].startswith(f"Built {tag} (")
            tags.append(tag)
            versions[version] = deploy_in_docker(sdk, pipeline, tag, store_mount)
        for version, name in versions.items():
            run = sdk.run_deployment(name, timeout_s=180)
            assert run["status"] == "Succeeded", run["message"]
            assert run["outputs"]["six"] == version
    finally:
        # once their containers are gone (the worker removes each just after its run's final
        # state): an image still used by a container would only lose its tag and stay behind
        eventually(lambda: leftover_containers(docker), 30, until=lambda left: not left)
        for tag in tags:
            docker.images.remove(tag, force=True)


def pod_containers(docker: Any) -> list[Any]:
    return docker.containers.list(all=True, filters={"label": f"{LABEL}=pod"}, sparse=True)


def deploy_pod(sdk: PipeDeploy, root: Path, image: str, store_mount: str, **settings: Any) -> str:
    """A low-latency deployment of `POD_PIPELINE` in a container of `image`, up; its name."""
    root.mkdir()
    (root / "pod_pipe.py").write_text(POD_PIPELINE)
    (root / "marker.txt").write_text(uuid.uuid4().hex)  # an archive of its own
    name = deploy_in_docker(
        sdk, f"{root / 'pod_pipe.py'}:count", image, store_mount, mode="low_latency", **settings
    )
    wait_until_up(sdk, name, timeout_s=180)
    return name


def test_a_low_latency_pod_is_one_container_that_keeps_module_state_between_runs(
    sdk: PipeDeploy,
    worker: ChildProcess,
    docker: Any,
    image: str,
    store_mount: str,
    tmp_path: Path,
) -> None:
    name = deploy_pod(sdk, tmp_path / "project", image, store_mount)
    (container,) = pod_containers(docker)
    runs = [sdk.run_deployment(name, timeout_s=60) for _ in range(3)]
    assert [r["status"] for r in runs] == ["Succeeded"] * 3, [r["message"] for r in runs]
    assert [r["outputs"]["count"] for r in runs] == [1, 2, 3]  # one process, state kept
    assert all(r["outputs"]["in_container"] for r in runs)
    # the container's first process: the pod itself, in its own pid namespace
    assert {r["outputs"]["pid"] for r in runs} == {1}
    assert [c.id for c in pod_containers(docker)] == [container.id]  # the same, still up
    messages = eventual_log_messages(sdk, runs[1]["execution_id"])
    assert "call 2 in pid 1" in messages, messages  # the run's own logs
    sdk.delete_deployment(name)
    eventually(lambda: pod_containers(docker), 60, until=lambda left: not left)


def test_a_pod_over_its_ram_request_is_killed_and_its_container_re_created(
    sdk: PipeDeploy,
    worker: ChildProcess,
    docker: Any,
    image: str,
    store_mount: str,
    tmp_path: Path,
) -> None:
    name = deploy_pod(
        sdk, tmp_path / "project", image, store_mount, ram_request="256MiB", max_retries=0
    )
    assert sdk.run_deployment(name, timeout_s=60)["outputs"]["count"] == 1
    killed = sdk.run_deployment(name, {"size_mib": 600}, timeout_s=120)
    assert killed["status"] != "Succeeded", killed
    assert "exceeded its RAM request of 256MiB" in (killed["message"] or ""), killed
    wait_until_up(sdk, name, timeout_s=180)
    after = sdk.run_deployment(name, timeout_s=60)
    assert after["status"] == "Succeeded", after["message"]
    assert after["outputs"]["count"] == 1  # a fresh pod
    sdk.delete_deployment(name)
    eventually(lambda: pod_containers(docker), 60, until=lambda left: not left)


def test_a_killed_pod_container_is_re_created_and_a_changed_archive_stops_it_saying_so(
    sdk: PipeDeploy,
    worker: ChildProcess,
    docker: Any,
    data_store: str,
    image: str,
    store_mount: str,
    tmp_path: Path,
) -> None:
    name = deploy_pod(sdk, tmp_path / "project", image, store_mount)
    assert sdk.run_deployment(name, timeout_s=60)["outputs"]["count"] == 1
    (first,) = pod_containers(docker)
    first.kill()  # as the engine would on a crash: the worker re-creates it
    eventually(
        lambda: [c.id for c in pod_containers(docker) if c.status == "running"],
        120,
        until=lambda running: running and running != [first.id],
    )
    wait_until_up(sdk, name, timeout_s=180)
    assert sdk.run_deployment(name, timeout_s=60)["outputs"]["count"] == 1  # a fresh pod
    # a container fetches the code into its own file system: the next one fetches it again
    code = sdk.get_deployment(name)["code"]
    load_data_store(data_store).upload(io.BytesIO(b"not the archive"), code["key"])
    (second,) = pod_containers(docker)
    second.kill()
    failed = eventually(
        lambda: sdk.get_deployment(name),
        120,
        until=lambda deployment: deployment["status"] == "creation_failed",
    )
    assert f"not the {code['sha256']} the deployment recorded" in failed["status_message"]
    sdk.delete_deployment(name)
    eventually(lambda: pod_containers(docker), 60, until=lambda left: not left)


def test_a_pod_whose_image_is_missing_fails_its_runs_saying_so(
    sdk: PipeDeploy, worker: ChildProcess, image: str, store_mount: str, tmp_path: Path
) -> None:
    missing = "pipedeploy-no-such-image:0"
    name = deploy_in_docker(
        sdk, write_project(tmp_path / "project"), missing, store_mount, mode="low_latency"
    )
    failed_pod = eventually(
        lambda: sdk.get_deployment(name),
        60,
        until=lambda deployment: deployment["status"] == "creation_failed",
    )
    assert f"{missing!r} is not on this machine's Docker engine" in failed_pod["status_message"]
    # as an elastic run whose container cannot start: Failed, saying why, not left waiting
    run = sdk.run_deployment(name, timeout_s=120)
    assert run["status"] == "Failed", run
    assert f"{missing!r} is not on this machine's Docker engine" in (run["message"] or "")
    sdk.delete_deployment(name)
