#!/usr/bin/env python3
"""The two set-up commands of prefect-pipedeploy; needs only python3.

    python3 dev.py up               # the local stack (Prefect server, worker) with its demo
    python3 dev.py up --database postgresql     # the same, the server on PostgreSQL
    python3 dev.py test             # lint, type-check and run the whole test suite (what CI runs)
    python3 dev.py test --fast      # lint, type-check, unit + integration tiers (no e2e)
    python3 dev.py test ARGS...     # lint, type-check, then `pytest ARGS` (e.g. tests/unit -x)

The whole suite and the fast tiers run in two pytest processes (pytest-xdist, `-n 2 --dist
loadfile`: a module's tests stay together), each with its own Prefect server: most of a test's
time is spent waiting on processes and servers, so two at once nearly halve it on 2 cores.

Each creates (or reuses) the project's virtualenv in .venv and installs the package into it.
The test tiers are tests/unit, tests/integration and tests/e2e (marked `e2e`): README.md, "Tests".
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".pipedeploy-installed"


def ensure_venv() -> None:
    """Create .venv and install the package with its test extras when pyproject.toml changed."""
    if not (BIN / "python").exists():
        print("Creating the virtualenv in .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("Installing prefect-pipedeploy and its test dependencies into .venv ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


def ensure_chromium() -> None:
    """Install Debian's chromium for the browser test (tests/e2e/test_ui_browser.py), and curl
    for the test that runs the `curl` line `pipedeploy up --demo` prints, when they are missing
    and this is a Debian machine run as root; elsewhere those tests say what to install.
    Playwright's own browser download is never used."""
    missing = [tool for tool in ("chromium", "curl") if not shutil.which(tool)]
    if not missing or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    print(f"Installing Debian's {' and '.join(missing)} for the tests ...", flush=True)
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=apt)


def ensure_postgresql() -> None:
    """Install Debian's postgresql for the end-to-end tests on PostgreSQL (tests/e2e/
    test_on_postgresql.py, test_postgresql_cluster.py) and `up --database postgresql` when it
    is missing and this is a Debian machine run as root; elsewhere they say what to install."""
    if glob.glob("/usr/lib/postgresql/*/bin/initdb") or not shutil.which("apt-get"):
        return
    if os.geteuid() != 0:
        return
    print("Installing Debian's postgresql for the tests on PostgreSQL ...", flush=True)
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt)
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=apt)


def docker_answers() -> bool:
    """Whether a Docker engine answers the `docker` client (DOCKER_HOST, or the local socket)."""
    if shutil.which("docker") is None:
        return False
    done = subprocess.run(["docker", "info"], capture_output=True)
    return done.returncode == 0


def ensure_docker() -> subprocess.Popen[bytes] | None:
    """A Docker engine for the docker runtime's tests (tests/e2e/test_docker_runtime.py), with
    debootstrap, which builds their base image: when none answers and this is a Debian machine
    run as root, install Debian's docker.io and debootstrap if missing and start `dockerd`
    (vfs storage, no iptables or bridge: containers use the host's network); the started
    engine, for `test` to stop at the end (its images stay, so the tests' images are built once
    per machine). Elsewhere those tests say what is missing."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not shutil.which("dockerd") or not shutil.which("debootstrap"):
        print("Installing Debian's docker.io and debootstrap for the docker tests ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "docker.io", "debootstrap"], check=True, env=apt
        )
    if docker_answers():
        return None
    log_path = VENV / "dockerd.log"  # the engine's output, kept beside the checkout's venv
    # overlay2 starts a container in about 0.4 s here; vfs copies the image first (about 20 s
    # for the tests' 584 MB image), for a root file system overlay2 cannot sit on
    for driver in ("overlay2", "vfs"):
        print(f"Starting dockerd ({driver}) for the docker tests ...", flush=True)
        with open(log_path, "ab") as log:
            engine = subprocess.Popen(
                ["dockerd", f"--storage-driver={driver}", "--iptables=false", "--bridge=none"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        for _ in range(120):
            if docker_answers():
                return engine
            if engine.poll() is not None:
                break
            time.sleep(0.5)
        stop_engine(engine)
    print(f"dockerd did not start (see {log_path}); the docker tests will fail", flush=True)
    return None


def stop_engine(engine: subprocess.Popen[bytes] | None) -> None:
    if engine is None or engine.poll() is not None:
        return
    engine.terminate()
    try:
        engine.wait(timeout=30)
    except subprocess.TimeoutExpired:
        engine.kill()
        engine.wait(timeout=10)


def wants_postgresql(args: list[str]) -> bool:
    """Whether `up` was asked for `--database postgresql` (or `--database=postgresql`)."""
    pairs = zip(args, args[1:], strict=False)
    return "--database=postgresql" in args or ("--database", "postgresql") in pairs


def run(*args: str) -> int:
    print("+", " ".join(args), flush=True)
    return subprocess.call(list(args), cwd=ROOT)


def test(extra: list[str]) -> int:
    """Ruff (check and format), mypy, then pytest: the whole suite, or with `--fast` every test
    but the end-to-end tier; other arguments go to pytest."""
    fast = "--fast" in extra
    extra = [arg for arg in extra if arg != "--fast"]
    sources = ("prefect_pipedeploy", "tests", "blocks", "benchmarks", "dev.py")
    checks = [
        (str(BIN / "ruff"), "check", *sources),
        (str(BIN / "ruff"), "format", "--check", *sources),
        (str(BIN / "mypy"), "prefect_pipedeploy"),
    ]
    for check in checks:
        if run(*check) != 0:
            return 1
    selection = ["-m", "not e2e"] if fast else []
    engine = None
    if not fast:
        ensure_chromium()
        ensure_postgresql()
        engine = ensure_docker()
    try:
        return run(str(BIN / "python"), "-m", "pytest", *selection, *(extra or ["-q", *PARALLEL]))
    finally:
        stop_engine(engine)


#: How the whole suite runs (`.ci/run` passes the same): two processes, a module in one.
PARALLEL = ("-n", "2", "--dist", "loadfile")


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command not in ("up", "test"):
        print(__doc__)
        return 2
    ensure_venv()
    if command == "up":
        if wants_postgresql(sys.argv[2:]):
            ensure_postgresql()
        os.execv(str(BIN / "pipedeploy"), [str(BIN / "pipedeploy"), "up", "--demo", *sys.argv[2:]])
    return test(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
