"""The process runtime: the one place that starts, measures and kills child processes.

For: `ProcessRuntime`, the `Runtime` that runs an elastic execution
(`python -m prefect_pipedeploy.engine.elastic <flow-run-id>`) or a pod
(`python -m prefect_pipedeploy.engine.pod ...`) as a child process in its own process group;
`start_child` / `ChildProcess`, the same for the processes of the local stack (server, worker,
gateway), which run under synchronous code; `kill_process_tree`, the one way a process group is
signalled; and `explain_exit`, a process's end in words (killed, out of memory, exit code N).
Not for: choosing what to run, or Prefect states (the worker reports them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from prefect_pipedeploy.runtimes.base import ProcessExit


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


def kill_process_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group of `pid` (each child started here leads its own group)."""
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


@contextlib.contextmanager
def _output_to(log_path: Path | None) -> Iterator[dict[str, Any]]:
    """The options every child gets: its own session (so its whole tree can be signalled), no
    stdin, output appended to `log_path` (or this process's output). The child keeps its own
    descriptor of the log; ours is closed once it has started."""
    log: IO[bytes] | None = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - closed below, the child has its own
    try:
        yield {
            "stdin": subprocess.DEVNULL,
            "stdout": log,
            "stderr": subprocess.STDOUT if log is not None else None,
            "start_new_session": True,
        }
    finally:
        if log is not None:
            log.close()


@dataclass
class ProcessHandle:
    """A child process started by `ProcessRuntime`."""

    process: asyncio.subprocess.Process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def identifier(self) -> str:
        return str(self.process.pid)

    async def wait(self) -> ProcessExit:
        code = await self.process.wait()
        return ProcessExit(exit_code=code, explanation=explain_exit(code))

    def signal(self, sig: int) -> None:
        kill_process_tree(self.process.pid, sig)

    def alive(self) -> bool:
        try:
            os.kill(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def rss_mib(self) -> float:
        return tree_rss_mib(self.process.pid)


class ProcessRuntime:
    """Runs executions and pods as child processes of the worker, in their own process group."""

    name = "process"
    shares_descriptors = True

    async def start(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        log_path: Path | None = None,
        pass_fds: Sequence[int] = (),
        mounts: Sequence[Path] = (),
    ) -> ProcessHandle:
        with _output_to(log_path) as options:
            process = await asyncio.create_subprocess_exec(
                *args, env=dict(env), cwd=cwd, pass_fds=tuple(pass_fds), **options
            )
        return ProcessHandle(process)


@dataclass
class ChildProcess:
    """A process of the local stack, with its log file; `stop()` ends it and its children."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Terminate, wait up to `grace_s`, then kill; returns the exit code."""
        if self.alive():
            kill_process_tree(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                kill_process_tree(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_child(
    name: str,
    args: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ChildProcess:
    """Start `args` in its own process group, output appended to `log_path`; as the OS user
    `user` (its own group, no other) when given: only root can do that (PostgreSQL, which
    refuses to run as root, runs as `postgres`)."""
    with _output_to(log_path) as options:
        popen = subprocess.Popen(
            args,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            **options,
            **as_user(user),
        )
    return ChildProcess(name=name, popen=popen, log_path=log_path)


def as_user(user: str | None) -> dict[str, Any]:
    """The `subprocess` options that run a child as the OS user `user` with its primary group
    and no supplementary ones (none for `None`: this process's own user)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


@dataclass
class AdoptedProcess:
    """A process this worker did not start but takes charge of (an execution or a pod left by a
    worker that died): it can be measured, signalled and waited for like one it started."""

    pid: int

    @property
    def identifier(self) -> str:
        return str(self.pid)

    async def wait(self) -> ProcessExit:
        """Wait until it has ended (it is not our child: its exit code is not ours to read)."""
        while True:
            try:
                process = psutil.Process(self.pid)
                if process.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            await asyncio.sleep(0.5)
        return ProcessExit(exit_code=0, explanation="ended (its exit code is unknown)")

    def signal(self, sig: int) -> None:
        kill_process_tree(self.pid, sig)

    def alive(self) -> bool:
        return psutil.pid_exists(self.pid)

    def rss_mib(self) -> float:
        return tree_rss_mib(self.pid)


def runtime_process_of(cmdline: Sequence[str]) -> tuple[str, str] | None:
    """What a process started by a runtime is, from its command line: ("elastic", flow run id)
    or ("pod", deployment id); None for any other process."""
    args = list(cmdline)
    for index, arg in enumerate(args[:-1]):
        if arg != "-m":
            continue
        module, rest = args[index + 1], args[index + 2 :]
        if module == "prefect_pipedeploy.engine.elastic" and rest:
            return "elastic", rest[0]
        if module == "prefect_pipedeploy.engine.pod" and "--deployment-id" in rest:
            position = rest.index("--deployment-id")
            if position + 1 < len(rest):
                return "pod", rest[position + 1]
    return None


#: The variable that names, to each process a worker starts, that worker's pid: a process in a
#: container is not the worker's child, but is still its own while that worker lives.
WORKER_PID_VARIABLE = "PIPEDEPLOY_WORKER_PID"


def api_url_of(pid: int) -> str | None:
    """The Prefect API a process was started for (its PREFECT_API_URL), None if unknown."""
    try:
        named = psutil.Process(pid).environ().get("PREFECT_API_URL")
    except psutil.Error:
        return None
    return named.rstrip("/") if named else None


def _is_worker(pid: int) -> bool:
    """Whether `pid` is a live pipedeploy worker process."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "worker" in cmdline and "pipedeploy" in cmdline


def _workers_pid_of(pid: int) -> int | None:
    try:
        named = psutil.Process(pid).environ().get(WORKER_PID_VARIABLE, "")
    except psutil.Error:
        return None
    return int(named) if named.isdigit() else None


def orphaned_runtime_processes(api_url: str | None = None) -> list[tuple[int, str, str]]:
    """(pid, kind, id) of every execution or pod process on this machine whose worker is gone
    (its parent is no longer the worker process that started it, and, for one in a container,
    the worker its environment names is gone too); with `api_url`, only those started for that
    Prefect API (the runs and deployments of another server are not ours)."""
    found = []
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        what = runtime_process_of(process.info.get("cmdline") or [])
        if what is None:
            continue
        try:
            parent = psutil.Process(process.info["ppid"])
            parent_cmdline = " ".join(parent.cmdline())
        except psutil.Error:
            parent_cmdline = ""
        if "worker" in parent_cmdline and (
            "prefect_pipedeploy" in parent_cmdline or "pipedeploy" in parent_cmdline
        ):
            continue  # a live worker's own
        worker_pid = _workers_pid_of(process.info["pid"])
        if worker_pid is not None and _is_worker(worker_pid):
            continue  # a live worker's own container
        if api_url is not None and api_url_of(process.info["pid"]) != api_url.rstrip("/"):
            continue  # another server's
        found.append((process.info["pid"], *what))
    return found
