"""A whole local stack started the way a user starts it: `pipedeploy up` on free ports.

For: tests that need what `up` starts together (Prefect server with its UI, a worker, the
gateway, a local data store) as one process tree they own: `pipedeploy_up` starts it under a
directory of the test's, waits for "Ready.", yields the stack's record (its URLs, pool and data
store) and stops it with Ctrl-C (SIGINT) as a user would, killing whatever is left after that.
Not for: the session's Prefect server (tests/conftest.py) or a lone worker or gateway
(tests/support/processes.py).

    with pipedeploy_up(tmp_path, pool="ui-pool") as stack:
        sdk = PipeDeploy(stack.api_url, stack.pool, stack.data_store, stack.gateway_url)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

from prefect_pipedeploy.settings import env_name
from prefect_pipedeploy.stack import STACK_FILE, StackRecord, free_port
from tests.support.eventually import eventually

UP_START_TIMEOUT_S = 180  # a first start migrates a new database; slow on a loaded machine
UP_STOP_TIMEOUT_S = 60


@contextlib.contextmanager
def pipedeploy_up(directory: Path, pool: str, *options: str) -> Iterator[StackRecord]:
    """`pipedeploy up --port P --gateway-port G --home DIR/stack --pool POOL [OPTIONS]` on free
    ports, with nothing of the test session's Prefect settings: its own PREFECT_HOME (so the
    record it leaves for other shells is found by nobody else) and no PREFECT_API_URL (so it
    starts its own server). Its output goes to DIR/up.log; a start that fails shows it."""
    home, log_path = directory / "stack", directory / "up.log"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PREFECT_API_URL", env_name("data_store"), env_name("gateway_url"))
    }
    env["PREFECT_HOME"] = str(directory / "client-home")
    command = [
        sys.executable,
        "-m",
        "prefect_pipedeploy.cli",
        "up",
        "--port",
        str(free_port()),
        "--gateway-port",
        str(free_port()),
        "--home",
        str(home),
        "--pool",
        pool,
        *options,
    ]
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    tree: list[psutil.Process] = []
    try:

        def ready() -> bool:
            text = log_path.read_text(errors="replace")
            if up.poll() is not None:
                raise RuntimeError(f"`pipedeploy up` exited with {up.returncode}:\n{text}")
            return "Ready." in text

        eventually(ready, UP_START_TIMEOUT_S, 0.5, what="`pipedeploy up` ready")
        tree = psutil.Process(up.pid).children(recursive=True)
        yield StackRecord(**json.loads((home / STACK_FILE).read_text()))
    finally:
        with contextlib.suppress(psutil.Error):
            tree = list({*tree, *psutil.Process(up.pid).children(recursive=True)})
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(UP_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:  # what `up` did not stop in time: never left to the next test
            with contextlib.suppress(psutil.Error):
                process.kill()
