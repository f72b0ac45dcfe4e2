"""`runtimes.orphans.take_orphan_notes`: the notes orphaned pods leave of the runs they hold.

A note is taken (and removed) once its pod is gone, by one caller only; a live pod's note stays;
an unreadable note is dropped; a half-written one of a dead pod is removed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from prefect_pipedeploy.runtimes.orphans import orphan_notes_dir, take_orphan_notes
from prefect_pipedeploy.settings import temporary_settings


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_note(directory: Path, pid: int, runs: list[uuid.UUID]) -> uuid.UUID:
    deployment_id = uuid.uuid4()
    note = {
        "deployment_id": str(deployment_id),
        "deployment_name": "d",
        "runs": list(map(str, runs)),
    }
    (directory / f"{pid}.json").write_text(json.dumps(note))
    return deployment_id


def test_notes_of_dead_pods_are_taken_once(tmp_path: Path) -> None:
    with temporary_settings(home=tmp_path):
        directory = orphan_notes_dir()
        directory.mkdir(parents=True)
        runs = [uuid.uuid4(), uuid.uuid4()]
        gone = dead_pid()
        deployment_id = write_note(directory, gone, runs)
        alive = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time; time.sleep(30)",
                "-m",
                "prefect_pipedeploy.engine.pod",
                "--deployment-id",
                "x",
            ]
        )
        try:
            write_note(directory, alive.pid, [uuid.uuid4()])
            (directory / f"{dead_pid()}.json").write_text("{not json")
            (directory / f"{dead_pid()}.tmp").write_text("{half")
            assert take_orphan_notes(pid=alive.pid) == []  # alive: it still runs them
            (note,) = take_orphan_notes()
            assert (note.pod_pid, note.deployment_id, note.runs) == (
                gone,
                deployment_id,
                tuple(runs),
            )
            assert take_orphan_notes() == []  # taken once
            assert sorted(p.name for p in directory.iterdir()) == [f"{alive.pid}.json"]
        finally:
            alive.kill()
            alive.wait()
        assert [n.pod_pid for n in take_orphan_notes(pid=alive.pid)] == [alive.pid]
