"""The machine's code cache keeps what runs use: `evict_code` removes an archive's folder no run
fetched within the retention, never one a live process works in (a pod runs from its folder for
as long as it lives), and the work folders of fetches that never finished; every fetch refreshes
its folder's time. Real folders, a real process in one of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefect_pipedeploy.datastore.code import evict_code, fetch_code, pack_folder
from prefect_pipedeploy.datastore.local import LocalDataStore

DAY_S = 24 * 3600.0
NOW = 1_800_000_000.0
DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def folder(root: Path, name: str, age_s: float) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "pipe.py").write_text("x = 1\n")
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


@pytest.mark.parametrize(
    ("entries", "removed"),
    [
        ({DIGEST_A: 8 * DAY_S, DIGEST_B: 1 * DAY_S}, {DIGEST_A}),  # unused past the retention
        ({DIGEST_A: 7 * DAY_S - 60}, set()),  # used within it
        ({f".{DIGEST_A[:12]}-x1y2": 8 * DAY_S}, {f".{DIGEST_A[:12]}-x1y2"}),  # a dead fetch's
        ({f".{DIGEST_A[:12]}-x1y2": 60}, set()),  # a fetch under way
        ({"notes": 30 * DAY_S, "a" * 63: 30 * DAY_S}, set()),  # not the cache's: left alone
        ({}, set()),
    ],
)
def test_what_no_run_used_within_the_retention_is_removed(
    tmp_path: Path, entries: dict[str, float], removed: set[str]
) -> None:
    root = tmp_path / "code"
    root.mkdir()
    for name, age_s in entries.items():
        folder(root, name, age_s)
    gone = evict_code(root, 7 * DAY_S, now=NOW)
    assert {path.name for path in gone} == removed
    assert {path.name for path in root.iterdir()} == set(entries) - removed


def test_a_missing_cache_has_nothing_to_remove(tmp_path: Path) -> None:
    assert evict_code(tmp_path / "never-made", 1.0) == []


@pytest.mark.parametrize("where", ["", "lib"])
def test_a_folder_a_live_process_works_in_is_kept_until_it_ends(tmp_path: Path, where: str) -> None:
    """As a pod runs from its code's folder (or a folder in it) for as long as it lives."""
    root = tmp_path / "code"
    old = folder(root, DIGEST_A, 30 * DAY_S)
    (old / "lib").mkdir()
    os.utime(old, (NOW - 30 * DAY_S, NOW - 30 * DAY_S))
    pod = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        cwd=old / where,
        stdin=subprocess.PIPE,
    )
    try:
        assert evict_code(root, 7 * DAY_S, now=NOW) == []
        assert old.is_dir()
    finally:
        pod.communicate(b"", timeout=30)
    assert evict_code(root, 7 * DAY_S, now=NOW) == [old]
    assert not old.exists()


def test_every_fetch_refreshes_its_folders_time(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "store"))
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "pipe.py").write_text("x = 1\n")
    packed = pack_folder(tmp_path / "project", directory=tmp_path)
    store.upload(packed.path, packed.key)
    root = tmp_path / "code"
    fetched = fetch_code(store, packed.key, packed.sha256, "'local'", root)
    a_month_ago = time.time() - 30 * DAY_S
    os.utime(fetched, (a_month_ago, a_month_ago))
    assert fetch_code(store, packed.key, packed.sha256, "'local'", root) == fetched
    assert evict_code(root, 7 * DAY_S) == []  # used just now
    os.utime(fetched, (a_month_ago, a_month_ago))
    assert evict_code(root, 7 * DAY_S) == [fetched]
    # evicted: the next run fetches it again from the store
    assert (fetch_code(store, packed.key, packed.sha256, "'local'", root) / "pipe.py").exists()
