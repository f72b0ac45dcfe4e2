"""The elastic runtime: one fresh process per execution, nothing resident while idle.

For: `run_elastic`, which runs one flow run as `python -m prefect_pipedeploy.engine.elastic
<flow-run-id>` through a `Runtime`, in the deployment's working directory (or a fresh temporary
one, removed afterwards), watched against its RAM request, and says how it ended: normally (the
run reported its own state), or with the reason the worker must record (killed, out of memory,
exit code N). Not for: admission or retries (the worker), the execution itself (`engine`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psutil

from prefect_pipedeploy.admission import run_key
from prefect_pipedeploy.iomapping import remove_execution_dirs
from prefect_pipedeploy.runtimes.base import Runtime, RuntimeHandle
from prefect_pipedeploy.worker.ram import RssWatcher


@dataclass(frozen=True)
class ElasticOutcome:
    """How an elastic execution's process ended."""

    identifier: str
    exit_code: int
    crash: str | None
    """Why the run must be marked Crashed ("The execution's process was killed ..."), or None
    when the process reported the run's state itself."""


WORKDIR_PREFIX = "pipedeploy-run-"
#: Names the temporary working directory in the execution's environment (its loader may change
#: directory), so a worker that adopts the process after its own worker died can remove it.
WORKDIR_VARIABLE = "PIPEDEPLOY_RUN_WORKDIR"


@contextlib.contextmanager
def _working_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield path
        return
    # named after this worker's pid, so a worker started after this one died can remove it
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as tmp:
        yield Path(tmp)


def remove_dead_workers_workdirs() -> list[Path]:
    """Remove the temporary working directories that workers of this machine which died
    (killed before their `TemporaryDirectory` ended) made for executions no process runs in any
    more; the removed ones. A directory an adopted execution still uses is kept (it goes when
    that execution ends), and so is any whose worker's pid is alive."""
    temp = Path(tempfile.gettempdir()).resolve()
    in_use = set()
    for process in psutil.process_iter(["environ"]):
        named = (process.info.get("environ") or {}).get(WORKDIR_VARIABLE)
        if named:
            in_use.add(Path(named))
    removed = []
    for workdir in temp.glob(f"{WORKDIR_PREFIX}*"):
        pid = workdir.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        # a live process of that pid may be its worker (even embedded in another program)
        if not pid.isdigit() or psutil.pid_exists(int(pid)) or workdir in in_use:
            continue
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(workdir)
    return removed


def elastic_workdir_of(pid: int) -> Path | None:
    """The temporary working directory this runtime made for the execution process `pid`
    (None when it runs in a directory of the deployment's, or is gone)."""
    try:
        named = psutil.Process(pid).environ().get(WORKDIR_VARIABLE)
    except psutil.Error:
        return None
    if not named:
        return None
    workdir = Path(named)
    in_temp = workdir.parent == Path(tempfile.gettempdir()).resolve()
    return workdir if in_temp and workdir.name.startswith(WORKDIR_PREFIX) else None


async def run_elastic(
    runtime: Runtime,
    rss: RssWatcher,
    flow_run_id: UUID,
    env: Mapping[str, str],
    working_dir: Path | None,
    ram_request: str,
    ram_request_mib: int,
    started: Callable[[RuntimeHandle], None],
) -> ElasticOutcome:
    """Run one execution's process to its end; `started(handle)` is called once it runs."""
    exceeded: list[str] = []
    key = run_key(flow_run_id)
    with _working_dir(working_dir) as cwd:
        process = await runtime.start(
            [sys.executable, "-m", "prefect_pipedeploy.engine.elastic", str(flow_run_id)],
            env={**env, WORKDIR_VARIABLE: str(cwd.resolve())},
            cwd=cwd,
        )
        started(process)
        rss.watch(key, process, ram_request_mib, ram_request, exceeded.append)
        try:
            ended = await process.wait()
        finally:
            rss.unwatch(key)
            remove_execution_dirs(str(flow_run_id))  # left by a process that was killed
    if exceeded:
        crash: str | None = f"The execution's process {exceeded[0]}."
    elif not ended.ok:
        crash = f"The execution's process {ended.explanation}."
    else:
        crash = None
    return ElasticOutcome(identifier=process.identifier, exit_code=ended.exit_code, crash=crash)
