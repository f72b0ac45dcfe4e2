"""prefect-pipedeploy as a new user gets it: the wheel, installed into a new virtualenv.

For: proving the package works without a source checkout. The session builds the wheel, installs
it with its dependencies into a fresh virtualenv, and from an empty directory runs
`pipedeploy up --demo --exit-after-demo` (the packaged demo pipeline), the CLI's help and
Prefect's discovery of the `pipedeploy` worker type through the `prefect.collections` entry
point. Not for: the behaviour of `up` and the CLI themselves (tests/test_cli.py runs them from
the checkout against the session's server).

Slow (about 3.5 min for this module): the install pulls Prefect and the rest from the package
index pip is configured with. Measured on the shared 2-core machine with a warm pip cache: the
wheel ~25 s, the virtualenv ~20 s, `pip install` 60-95 s, then `up --demo` ~45 s; with a cold
cache the install takes minutes more. So the virtualenv is built once per session (pip's own
cache is used, not disabled) and the tests are marked e2e.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from prefect_pipedeploy.stack import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
# Left out of the copy the wheel is built from: a stale build/ of setuptools would put modules
# deleted since into the wheel, and the checkout stays untouched.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".pipedeploy",
    "results",
)


@dataclass
class InstalledWheel:
    wheel: Path
    venv: Path
    install_s: float

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def user_environment(prefect_home: Path, **extra: str) -> dict[str, str]:
    """This machine's environment minus anything of the checkout or the test session: no
    PREFECT_* (so no PREFECT_API_URL), no PYTHONPATH, no active virtualenv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    prefect_home.mkdir(parents=True, exist_ok=True)
    return {**env, "PREFECT_HOME": str(prefect_home), **extra}


def run(
    args: list[str], timeout_s: float, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=env
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result


def dist_info(wheel: Path) -> str:
    """`prefect_pipedeploy-0.1.0.dist-info` of `prefect_pipedeploy-0.1.0-py3-none-any.whl`."""
    return "-".join(wheel.name.split("-")[:2]) + ".dist-info"


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """The project's wheel, installed with its dependencies into a new virtualenv (once)."""
    base = tmp_path_factory.mktemp("installed-wheel")
    env = user_environment(base / "prefect-home")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"), "."],
        timeout_s=600,
        cwd=source,
        env=env,
    )
    (wheel,) = (base / "dist").glob("prefect_pipedeploy-*.whl")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout_s=300, cwd=base, env=env)
    started = time.monotonic()
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        timeout_s=1200,
        cwd=base,
        env=env,
    )
    install_s = time.monotonic() - started
    print(f"\n`pip install` of {wheel.name} into a new virtualenv took {install_s:.0f} s")
    return InstalledWheel(wheel=wheel, venv=venv, install_s=install_s)


def test_the_wheel_holds_the_package_and_its_demo(installed: InstalledWheel) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = wheel.namelist()
        entry_points = wheel.read(f"{dist_info(installed.wheel)}/entry_points.txt")
    assert "prefect_pipedeploy/examples/demo.py" in names
    assert "prefect_pipedeploy/cli/__main__.py" in names
    assert {name.split("/")[0] for name in names} == {
        "prefect_pipedeploy",
        dist_info(installed.wheel),
    }, "only the package goes into the wheel (no tests, flows or benchmarks)"
    assert b"[prefect.collections]" in entry_points
    assert b"pipedeploy = prefect_pipedeploy.cli:app" in entry_points


def test_the_cli_and_prefect_find_the_installed_package(
    installed: InstalledWheel, tmp_path: Path
) -> None:
    """`python -m prefect_pipedeploy.cli`, the `pipedeploy` script, and Prefect's lookup of
    the worker type by name (what `prefect worker start --type pipedeploy` and
    `prefect work-pool create --type pipedeploy` do) work from the new virtualenv."""
    empty = tmp_path / "cwd"
    empty.mkdir()
    env = user_environment(tmp_path / "prefect-home")
    where = run(
        [
            str(installed.bin / "python"),
            "-c",
            "import prefect_pipedeploy; print(prefect_pipedeploy.__file__)",
        ],
        timeout_s=120,
        cwd=empty,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout
    for command in (
        [str(installed.bin / "python"), "-m", "prefect_pipedeploy.cli", "--help"],
        [str(installed.bin / "pipedeploy"), "--help"],
    ):
        helped = run(command, timeout_s=120, cwd=empty, env=env)
        assert "Start the whole local stack" in helped.stdout, helped.stdout  # `up`
        assert "Start a pipedeploy worker" in helped.stdout, helped.stdout
    template = run(
        [
            str(installed.bin / "prefect"),
            "work-pool",
            "get-default-base-job-template",
            "--type",
            "pipedeploy",
        ],
        timeout_s=120,
        cwd=empty,
        env=env,
    )
    # found through the entry point in this process, not by asking a (temporary) server
    assert "Starting temporary server" not in template.stdout + template.stderr
    variables = json.loads(template.stdout)["variables"]["properties"]
    assert {"mode", "ram_request", "execution_rule"} <= set(variables)
    assert list(empty.iterdir()) == []


def running(process: psutil.Process) -> bool:
    """Alive and not a zombie (an exited orphan whose new parent has not reaped it yet)."""
    with contextlib.suppress(psutil.Error):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False


class ProcessTracker:
    """Every process carrying this run's marker variable: `up` and all it starts inherit it,
    whichever process group or session they put themselves in."""

    def __init__(self) -> None:
        self.marker = ("PIPEDEPLOY_TEST_PROCESS_MARKER", uuid.uuid4().hex)
        self.seen: dict[int, psutil.Process] = {}
        self.environ: dict[int, dict[str, str]] = {}
        self.cmdlines: dict[int, str] = {}

    def marked(self) -> Iterator[psutil.Process]:
        name, value = self.marker
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get(name) == value:
                    yield process

    def sample(self) -> None:
        for process in self.marked():
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(process.pid, process)
                self.environ[process.pid] = process.environ()  # the latest, after its exec
                self.cmdlines[process.pid] = " ".join(process.cmdline())

    def started(self, *words: str) -> list[int]:
        return [pid for pid, line in self.cmdlines.items() if all(w in line for w in words)]

    def left_running(self, timeout_s: float) -> list[str]:
        """Processes still alive after `timeout_s` (an execution may be finishing its exit)."""
        _, alive = psutil.wait_procs([*self.seen.values(), *self.marked()], timeout=timeout_s)
        return [f"{p.pid}: {self.cmdlines.get(p.pid, '?')}" for p in alive if running(p)]

    def kill_all(self) -> None:
        """Clean up after a failure: kill whatever is still alive."""
        for process in [*self.seen.values(), *self.marked()]:
            with contextlib.suppress(psutil.Error):
                process.kill()


def test_up_demo_runs_from_the_installed_wheel(installed: InstalledWheel, tmp_path: Path) -> None:
    """From an empty directory, without a Prefect API configured: exit code 0, the demo's
    outputs, the server's and data store's files under --home, nothing in the working
    directory, and no process left behind."""
    empty, home, log_path = tmp_path / "cwd", tmp_path / "stack", tmp_path / "up.log"
    empty.mkdir()
    port, gateway_port = free_port(), free_port()
    tracker = ProcessTracker()
    env = user_environment(tmp_path / "prefect-home", **dict([tracker.marker]))
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            [
                str(installed.bin / "pipedeploy"),
                "up",
                "--demo",
                "--exit-after-demo",
                "--port",
                str(port),
                "--gateway-port",
                str(gateway_port),
                "--home",
                str(home),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=empty,
        )
        try:
            deadline = time.monotonic() + 600
            while up.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()
                tracker.sample()
                time.sleep(0.5)
            left = tracker.left_running(timeout_s=30)
        finally:
            if up.poll() is None:
                up.kill()
            tracker.kill_all()
    output = log_path.read_text()
    assert up.returncode == 0, output
    assert left == [], f"left running after `up` exited: {left}\n{output}"

    assert f"Prefect server:  http://127.0.0.1:{port}/api" in output
    assert f"http://127.0.0.1:{gateway_port}/endpoints/demo-score" in output
    assert "Demo execution:" in output and "-> Succeeded" in output, output
    outputs = json.loads(output.split("Demo outputs:")[1].splitlines()[0])
    assert outputs == {"words": 4, "score": 6.5}  # "hello from prefect pipedeploy"

    assert (home / "prefect.db").is_file()
    for name in ("server", "worker", "gateway"):
        assert (home / "logs" / f"{name}.log").is_file(), name
    assert (home / "datastore").is_dir(), "the local data store lives under --home"
    assert list(empty.iterdir()) == [], "`up` wrote into its working directory"

    server = tracker.started("prefect", "server", "start")
    worker = tracker.started("prefect_pipedeploy.cli", "worker")
    gateway = tracker.started("prefect_pipedeploy.cli", "gateway")
    assert server and worker and gateway, tracker.cmdlines
    for pid in worker:  # the worker keeps pod state and RAM leases under --home, not in the cwd
        assert tracker.environ[pid].get("PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME") == str(
            home.resolve()
        )
