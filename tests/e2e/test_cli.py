"""The `pipedeploy` command line, run as a user runs it: real processes, real server."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import ChildProcess, free_port
from tests.support.eventually import eventually
from tests.support.executions import unique
from tests.support.paths import PIPELINES, ROOT

PIPEDEPLOY = [sys.executable, "-m", "prefect_pipedeploy.cli"]


def run_cli(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_python(*PIPEDEPLOY[1:], *args, timeout=timeout, env=env, cwd=cwd)


def run_python(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ if env is None else env,
        cwd=cwd,
    )


def test_up_demo_starts_and_stops_cleanly(tmp_path: Path) -> None:
    """`pipedeploy up --demo`: own server, worker, demo outputs; Ctrl-C stops every process."""
    port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "client-home")
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115
    up = subprocess.Popen(
        [
            *PIPEDEPLOY,
            "up",
            "--demo",
            "--port",
            str(port),
            "--gateway-port",
            str(gateway_port),
            "--home",
            str(tmp_path / "stack"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )

    def up_log() -> str:
        text = (tmp_path / "up.log").read_text()
        assert "Ready." in text or up.poll() is None, text  # `up` exited before it was ready
        return text

    try:
        eventually(up_log, 240, 0.5, until=lambda text: "Ready." in text)
        output = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}/api" in output
        assert "Demo execution:" in output and "-> Succeeded" in output
        outputs = json.loads(output.split("Demo outputs:")[1].splitlines()[0])
        assert outputs == {"words": 4, "score": 6.5}  # "hello from prefect pipedeploy"
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{gateway_port}/health").status_code == 200
        assert f"curl -L http://127.0.0.1:{gateway_port}/endpoints/demo-score" in output
        # the line works as printed: it follows the 303 to the execution and gets its outputs
        (curl_line,) = [
            line.split("Demo endpoint:", 1)[1].strip()
            for line in output.splitlines()
            if "Demo endpoint:" in line
        ]
        assert shutil.which("curl"), "curl is missing: apt-get install curl (dev.py does)"
        called = subprocess.run(
            ["bash", "-c", f"{curl_line} --silent --show-error --max-time 120"],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout)["outputs"] == {"words": 1, "score": 5.0}, called.stdout
        # the UI served on this port asks for its API on this port (before: 127.0.0.1:4200)
        ui_settings = httpx.get(f"http://127.0.0.1:{port}/ui-settings").json()
        assert ui_settings["api_url"] == f"http://127.0.0.1:{port}/api"
        assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in output
        # a second shell, elsewhere, with no PREFECT_API_URL: the CLI and the SDK find the stack
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        listed = run_cli("deployment", "ls", env=env, cwd=elsewhere)
        assert listed.returncode == 0, listed.stderr
        assert "demo-score" in listed.stdout
        assert f"Using the local stack of `pipedeploy up` (pid {up.pid}" in listed.stderr
        sdk_script = "from prefect_pipedeploy import PipeDeploy; pd = PipeDeploy(); " + (
            "print(pd.api_url, pd.gateway_url, [d['name'] for d in pd.list_deployments()])"
        )
        from_sdk = run_python("-c", sdk_script, env=env, cwd=elsewhere)
        assert from_sdk.returncode == 0, from_sdk.stderr
        assert from_sdk.stdout.split() == [
            f"http://127.0.0.1:{port}/api",
            f"http://127.0.0.1:{gateway_port}",
            "['demo-score']",
        ]
        records = [
            tmp_path / "stack" / "stack.json",
            tmp_path / "client-home" / "pipedeploy-stack.json",
        ]
        assert all(record.exists() for record in records)
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3  # server, worker, gateway
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=15)
        assert alive == [], f"left running: {alive}"
        assert [record for record in records if record.exists()] == []
        for url in (
            f"http://127.0.0.1:{port}/api/health",
            f"http://127.0.0.1:{gateway_port}/health",
        ):
            try:
                httpx.get(url, timeout=2)
                raise AssertionError(f"{url} still answers after `up` stopped")
            except httpx.ConnectError:
                pass
    finally:
        if up.poll() is None:
            up.kill()
        log.close()


def test_up_with_an_unreachable_prefect_api_says_what_it_tried(tmp_path: Path) -> None:
    """`pipedeploy up` with PREFECT_API_URL pointing at no server: one message naming the URL,
    why it is used, and the two ways out. Before: "Using the Prefect API at ..." then a raw
    traceback ending in ConnectError."""
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "client-home")}
    result = run_cli("up", "--home", str(tmp_path / "stack"), env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"PREFECT_API_URL is set to {url} (in the environment)" in result.stderr
    assert "unset PREFECT_API_URL" in result.stderr and "start that server" in result.stderr


def test_deployment_and_execution_commands(sdk: PipeDeploy, worker: ChildProcess) -> None:
    name = unique("cli")
    sdk.create_deployment(f"{PIPELINES}:counter", name)
    execution = sdk.run_deployment(name, {"marker": "from-cli"}, timeout_s=60)
    listed = run_cli("deployment", "ls")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout
    assert listed.stdout.splitlines()[0].split() == ["NAME", "TRIGGER", "MODE", "STATUS"]
    got = run_cli("deployment", "get", name)
    assert json.loads(got.stdout)["name"] == name
    ls = run_cli("executions", "ls", "--deployment", name, "--limit", "500")
    header, row = ls.stdout.splitlines()  # one execution under the header row
    assert header.split() == ["EXECUTION", "ID", "DEPLOYMENT", "STATUS", "STARTED", "MESSAGE"]
    assert row.split()[:3] == [execution["execution_id"], name, "Succeeded"]
    shown = json.loads(run_cli("executions", "get", execution["execution_id"]).stdout)
    assert shown["outputs"]["count"] >= 1
    eventually(
        lambda: run_cli("executions", "logs", execution["execution_id"]).stdout,
        15,
        0.5,
        until=lambda logs: "marker=from-cli" in logs,
    )
    ended = run_cli("executions", "cancel", execution["execution_id"])
    assert ended.returncode == 1 and "Traceback" not in ended.stderr, ended.stderr
    assert f"execution {execution['execution_id']} has already ended" in ended.stderr
    assert run_cli("deployment", "rm", name).returncode == 0


def test_errors_are_one_line_without_traceback(prefect_api: str) -> None:
    result = run_cli("deployment", "get", "no-such-deployment")
    assert result.returncode == 1
    assert "error: no deployment named 'no-such-deployment'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    missing = run_cli("executions", "get", "nope")
    assert missing.returncode == 1 and "no execution with id 'nope'" in missing.stderr


def test_prefect_discovers_the_worker_type(prefect_api: str) -> None:
    """`prefect work-pool create --type pipedeploy` gets our template through the entry point."""
    pool = unique("native-pool")
    created = subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", "pipedeploy"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    inspected = subprocess.run(
        [sys.executable, "-m", "prefect", "work-pool", "inspect", pool],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert "'type': 'pipedeploy'" in inspected.stdout or "type='pipedeploy'" in inspected.stdout
    assert "ram_request" in inspected.stdout


def test_blocks_register_script_saves_a_usable_store(prefect_api: str, tmp_path: Path) -> None:
    from prefect_pipedeploy.datastore.configured import load_data_store

    name = unique("script-store")
    result = subprocess.run(
        [sys.executable, "blocks/register.py", "local", name, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    reference = f"pipedeploy-local-data-store/{name}"
    assert reference in result.stdout
    store = load_data_store(reference)
    store.upload(io.BytesIO(b"hello"), "a/b.txt")
    assert (tmp_path / "store" / "a" / "b.txt").read_bytes() == b"hello"


def test_prefect_worker_start_runs_pipedeploy_work(prefect_api: str, tmp_path: Path) -> None:
    """The worker also starts the Prefect way: `prefect worker start --type pipedeploy`."""
    from prefect_pipedeploy.stack import start_child

    pool = unique("native-way")
    sdk = PipeDeploy(work_pool_name=pool)
    name = unique("prefect-way")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    worker = start_child(
        "prefect-worker",
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--type",
            "pipedeploy",
            "--pool",
            pool,
        ],
        tmp_path / "worker.log",
        env=dict(os.environ),
    )
    try:
        result = sdk.run_deployment(name, {"text": "the prefect way"}, timeout_s=120)
        assert result["status"] == "Succeeded", worker.log_tail()
        assert result["outputs"] == {"words": 3, "score": 4.333}
    finally:
        worker.stop()
