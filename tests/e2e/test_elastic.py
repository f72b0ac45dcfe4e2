"""Elastic mode end to end: a real worker process runs each execution in a fresh process."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import deploy, eventual_log_messages, unique
from tests.support.processes import start_worker


@pytest.fixture(scope="module")
def worker(pool: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    # A one-minute fallback poll: every run below must be picked up through Prefect's events.
    child = start_worker(
        pool,
        tmp_path_factory.mktemp("worker-logs"),
        env={"PREFECT_INTEGRATIONS_PIPEDEPLOY_POLL_SECONDS": "60"},
    )
    yield child
    child.stop()


def test_run_succeeds_with_outputs_and_logs(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "counter")
    # well under the 60 s fallback poll: the worker was woken by the run's event
    execution = sdk.run_deployment(name, {"marker": "elastic-1"}, timeout_s=40)
    assert execution["status"] == "Succeeded", execution
    assert execution["outputs"]["count"] == 1
    assert execution["outputs"]["pid"] != worker.popen.pid
    assert execution["attempts"] == 1
    assert "marker=elastic-1" in eventual_log_messages(sdk, execution["execution_id"])
    listed = sdk.list_pipeline_executions(name)
    assert [e["execution_id"] for e in listed] == [execution["execution_id"]]
    assert listed[0]["deployment_name"] == name


def test_each_execution_gets_a_fresh_process(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "counter")
    first = sdk.run_deployment(name, timeout_s=60)
    second = sdk.run_deployment(name, timeout_s=60)
    # module state does not survive: a new process imported the pipeline each time
    assert first["outputs"]["count"] == second["outputs"]["count"] == 1
    assert first["outputs"]["pid"] != second["outputs"]["pid"]
    # nothing resident while idle: the run's process exits once it has flushed its logs
    eventually(
        lambda: psutil.Process(worker.popen.pid).children(recursive=True),
        15,
        0.2,
        until=lambda children: not children,
        what="no elastic run's process stays resident",
    )


def test_plain_function_outputs(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "score")
    execution = sdk.run_deployment(name, {"text": "a bb ccc", "repeat": 2}, timeout_s=60)
    assert execution["status"] == "Succeeded"
    assert execution["outputs"] == {"words": 6, "score": 2.0}


def test_pipeline_failure_is_failed_with_the_reason(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "fails")
    execution = sdk.run_deployment(name, {"message": "bad batch"}, timeout_s=60)
    assert execution["status"] == "Failed"
    assert "bad batch" in execution["message"]
    assert execution["outputs"] is None
    assert execution["attempts"] == 2  # max_retries=1: retried once, then final


def test_killed_process_is_error_with_cause(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = deploy(sdk, "suicide", max_retries=0)
    execution = sdk.run_deployment(name, timeout_s=60)
    assert execution["status"] == "Error"
    assert execution["state_name"] == "Crashed"
    assert "killed (SIGKILL)" in execution["message"]
    assert "out of memory" in execution["message"]
    assert worker.alive()


def test_unloadable_pipeline_fails_with_reason(
    sdk: PipeDeploy, worker: ChildProcess, tmp_path: Path
) -> None:
    source = tmp_path / "pipeline.py"
    source.write_text("def model(x: int = 1) -> dict:\n    return {'x': x}\n")
    name = unique("broken")
    sdk.create_deployment(f"{source}:model", name)
    source.write_text(textwrap.dedent("import not_a_module_anywhere\n"))
    execution = sdk.run_deployment(name, timeout_s=60)
    assert execution["status"] == "Failed"
    assert "Could not load the pipeline" in execution["message"]
    assert "not_a_module_anywhere" in execution["message"]
