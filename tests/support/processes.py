"""Real processes, started as a user starts them: `pipedeploy worker`, `pipedeploy gateway`.

For: starting a worker or a gateway on the session's Prefect server (through the same stack
code as `pipedeploy up`), finding the pods under a worker, sampling a value while work runs,
pointing this process and its children at another Prefect server for a while (`api_switched`).
Each child is stopped by the caller (`child.stop()`: terminate, grace, kill).
Not for: the Prefect server (tests/conftest.py starts the session's) or moto (s3_server.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psutil

from prefect_pipedeploy.stack import ChildProcess, free_port, start_child
from tests.support.eventually import EventuallyTimeout, eventually

T = TypeVar("T")
WORKER_START_TIMEOUT_S = 60


def start_worker(
    pool: str,
    log_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ChildProcess:
    """Start `pipedeploy worker --pool POOL` as a user would (in `cwd`, default: ours), and
    wait until it says so."""
    child = start_child(
        f"worker-{pool}",
        [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", pool, *extra],
        log_dir / f"worker-{pool}-{uuid.uuid4().hex[:6]}.log",
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )

    def started() -> bool:
        if "started!" in child.log_path.read_text(errors="replace"):
            return True
        if not child.alive():
            raise RuntimeError("the worker exited")
        return False

    try:
        eventually(started, WORKER_START_TIMEOUT_S, 0.2)
    except (RuntimeError, EventuallyTimeout) as exc:
        child.stop()
        raise RuntimeError(
            f"worker did not start ({exc}); its log ends with:\n{child.log_tail()}"
        ) from exc
    return child


def start_gateway(
    name: str, pools: list[str], log_dir: Path, env: dict[str, str]
) -> tuple[ChildProcess, str]:
    """Start `pipedeploy gateway` for `pools` on a free port; the child and its URL.

    Returns at once: wait for `{url}/health` (stack.wait_for_http) before calling it."""
    port = free_port()
    pool_args = [arg for pool in pools for arg in ("--pool", pool)]
    child = start_child(
        f"gateway-{name}",
        [
            sys.executable,
            "-m",
            "prefect_pipedeploy.cli",
            "gateway",
            *pool_args,
            "--port",
            str(port),
        ],
        log_dir / f"gateway-{name}.log",
        env={**os.environ, **env},
    )
    return child, f"http://127.0.0.1:{port}"


def cmdline(process: psutil.Process) -> str:
    """A process's command line; empty once it has exited (or is a zombie)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def pod_processes(worker: ChildProcess) -> list[psutil.Process]:
    """The low-latency pods running under `worker`."""
    return [
        p
        for p in psutil.Process(worker.popen.pid).children(recursive=True)
        if "prefect_pipedeploy.engine.pod" in cmdline(p)
    ]


def peaks_during(probes: dict[str, Callable[[], int]], work: Callable[[], T]) -> tuple[T, dict]:
    """Run `work` while sampling each probe every 50 ms; its result and each probe's peak."""
    peak = dict.fromkeys(probes, 0)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for key, probe in probes.items():
                peak[key] = max(peak[key], probe())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return work(), peak
    finally:
        stop.set()
        sampler.join()


@contextlib.contextmanager
def api_switched(api_url: str) -> Iterator[str]:
    """`api_url` as PREFECT_API_URL for this process (environment and Prefect's settings) and
    the children it starts while the block runs; the session's comes back after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
