"""The process runtime: one child Python process, watched until it exits.

For: starting an elastic execution (`python -m prefect_pipedeploy.engine.elastic <flow-run-id>`) or a
pod, in its own process group, and explaining its exit in words (killed, out of memory,
exit code N). Not for: choosing what to run, or Prefect states (the worker reports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ProcessExit:
    """How a child process ended."""

    exit_code: int
    explanation: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def explain_exit(code: int) -> str:
    """Words for a process's exit code (negative: killed by that signal)."""
    if code == 0:
        return "exited normally"
    if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return (
            "was killed (SIGKILL); most often the machine or the container ran out of memory"
            " - raise ram_request or lower the batch size"
        )
    if code in (-signal.SIGTERM, 128 + signal.SIGTERM):
        return "was terminated (SIGTERM), for example because its worker stopped"
    if code in (-signal.SIGINT, 128 + signal.SIGINT):
        return "was interrupted (SIGINT)"
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


async def start_process(
    args: list[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> asyncio.subprocess.Process:
    """Start `args` in a new session; output goes to `log_path` or to this process's output."""
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child
    try:
        return await asyncio.create_subprocess_exec(
            *args,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT if log else None,
            start_new_session=True,
        )
    finally:
        if log is not None:
            log.close()  # the child holds its own descriptor


async def wait_process(process: asyncio.subprocess.Process) -> ProcessExit:
    code = await process.wait()
    return ProcessExit(exit_code=code, explanation=explain_exit(code))


def kill_process_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group of `pid` (each runtime child leads its own group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / 1024**2
