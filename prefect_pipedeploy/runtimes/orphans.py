"""Pods left by a worker that died: the note of the runs they hold, and ending those runs.

A pod whose worker was killed finishes its runs and exits; while it does, it keeps a note of the
runs it holds in `orphan_notes_dir()` (`OrphanNote.write`, from `engine.pod`). If it dies before
it is done, the worker that finds it dead (the one that adopted it, or the next to start) takes
the note (`take_orphan_notes`) and ends those runs (`end_orphaned_runs`), as the dead worker
would have. Not for: adopting live pods (the worker), or a live worker's pods (`low_latency`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psutil
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger

from prefect_pipedeploy.iomapping import remove_execution_dirs
from prefect_pipedeploy.prefect_api.runs import crash_run, requeue_run
from prefect_pipedeploy.runtimes.process import runtime_process_of
from prefect_pipedeploy.settings import get_settings

logger = get_logger("prefect_pipedeploy.runtimes.orphans")


def orphan_notes_dir() -> Path:
    """Where pods whose worker died note the runs they still hold (`engine.pod`), one file per
    pod (`<pid>.json`), for every worker of the machine to see."""
    return get_settings().home.resolve() / "orphaned-pods"


@dataclass(frozen=True)
class OrphanNote:
    """The runs an orphaned pod held when it was last seen alive."""

    pod_pid: int
    deployment_id: UUID
    deployment_name: str
    runs: tuple[UUID, ...]

    def write(self, path: Path) -> None:
        """Write the note at `path` whole or not at all (through `<pid>.tmp`, renamed), so a
        pod killed as it writes leaves no half note; raises OSError."""
        data = {
            "deployment_id": str(self.deployment_id),
            "deployment_name": self.deployment_name,
            "runs": [str(run) for run in self.runs],
        }
        partial = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(data))
        os.replace(partial, path)


def _pod_alive(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        what = runtime_process_of(process.cmdline())
    except psutil.Error:
        return False
    return what is not None and what[0] == "pod"


def take_orphan_notes(pid: int | None = None) -> list[OrphanNote]:
    """The notes of orphaned pods that are gone (with `pid`, only that pod's): each note is
    taken by one caller only (renamed away, then read and removed), so its runs are ended once.
    A pod still alive keeps its note: it still runs them."""
    directory = orphan_notes_dir()
    found = sorted(directory.glob("*.json")) if directory.is_dir() else []
    for partial in directory.glob("*.tmp") if pid is None and directory.is_dir() else []:
        if partial.stem.isdigit() and not _pod_alive(int(partial.stem)):
            partial.unlink(missing_ok=True)  # a pod killed as it wrote its note
    notes = []
    for path in found:
        if not path.stem.isdigit() or (pid is not None and int(path.stem) != pid):
            continue
        if _pod_alive(int(path.stem)):
            continue
        taken = path.with_name(f"{path.stem}.taken-{os.getpid()}")
        try:
            os.rename(path, taken)
        except FileNotFoundError:
            continue  # another worker took it first
        try:
            data = json.loads(taken.read_text())
            notes.append(
                OrphanNote(
                    pod_pid=int(path.stem),
                    deployment_id=UUID(data["deployment_id"]),
                    deployment_name=str(data.get("deployment_name")),
                    runs=tuple(UUID(run) for run in data["runs"]),
                )
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("Ignored the unreadable orphaned pod note %s: %s", path.name, exc)
        finally:
            taken.unlink(missing_ok=True)
    return notes


def put_back_orphan_note(note: OrphanNote) -> None:
    """Put back a note whose runs could not all be ended (the API away): the next look ends
    them."""
    note.write(orphan_notes_dir() / f"{note.pod_pid}.json")


async def end_orphaned_runs(client: PrefectClient, note: OrphanNote) -> list[UUID]:
    """End the runs an orphaned pod held when it died: Crashed, saying why, if they were
    running; back to the queue if it never began them; final ones are left alone. Returns the
    runs it ended Crashed (their retries are the caller's)."""
    why = f"the low-latency pod of deployment {note.deployment_name!r} ended after the worker that started it died"
    crashed = []
    for flow_run_id in note.runs:
        try:
            state = (await client.read_flow_run(flow_run_id)).state
        except ObjectNotFound:
            continue
        if state is None or state.type == StateType.PENDING:
            await requeue_run(
                client, flow_run_id, f"Re-queued: {why}, before it began this execution"
            )
        elif state.type in (StateType.RUNNING, StateType.CANCELLING):
            if await crash_run(
                client, flow_run_id, f"{why[0].upper()}{why[1:]}, while running this execution."
            ):
                crashed.append(flow_run_id)
        remove_execution_dirs(str(flow_run_id))  # the dead pod could not
    return crashed
