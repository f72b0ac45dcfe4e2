"""File outputs (`iomapping.route_outputs`): only a returned `pathlib.Path` is a file, and only
a regular file under the execution's own directories is read. Table-driven, on a local store in
a temporary directory; no server."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.exceptions import OutputRoutingError
from prefect_pipedeploy.iomapping import file_output_path, file_output_roots, route_outputs
from prefect_pipedeploy.spec import build_spec

NOW = datetime(2024, 3, 9, 7, 5, 2, tzinfo=timezone.utc)
SECRET = Path("/etc/passwd")  # any file the worker can read but the execution did not write


def spec() -> Any:
    return build_spec(
        outputs_mapping=[{"pipeline_output_name": "o", "datastore_path": "results/o.bin"}]
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalDataStore:
    return LocalDataStore(root=str(tmp_path / "store"))


def stored(store: LocalDataStore) -> bytes:
    out = io.BytesIO()
    store.download("results/o.bin", out)
    return out.getvalue()


def _written(work: Path) -> Path:
    target = work / "report.txt"
    target.write_bytes(b"the execution's report")
    return target


def _link(work: Path, to: Path) -> Path:
    link = work / "link.txt"
    link.symlink_to(to)
    return link


# (id, value the pipeline returns given its work directory, what the store holds or the refusal)
ACCEPTED: list[tuple[str, Callable[[Path], Any], Callable[[Path], bytes]]] = [
    ("a Path it wrote", _written, lambda work: b"the execution's report"),
    (
        "a relative Path",
        lambda work: Path(_written(work).name),
        lambda w: b"the execution's report",
    ),
    (
        "a link inside",
        lambda work: _link(work, _written(work)),
        lambda w: b"the execution's report",
    ),
    (
        "a caller's path-shaped dict is JSON",
        lambda work: {"path": str(SECRET)},
        lambda work: json.dumps({"path": str(SECRET)}).encode(),
    ),
    (
        "a path-shaped dict of its own file is JSON too",
        lambda work: {"path": str(_written(work))},
        lambda work: json.dumps({"path": str(work / "report.txt")}).encode(),
    ),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_what_is_stored(
    store: LocalDataStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: Callable[[Path], Any],
    expected: Callable[[Path], bytes],
) -> None:
    """Before the fix, {"path": "/etc/passwd"} sent by a caller and echoed by the pipeline was
    read from disk and its bytes stored (and answered to the caller)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    routed = route_outputs(spec(), {"o": value(work)}, "run-1", NOW, store, file_roots=[work])
    assert routed.stored == {"o": "results/o.bin"}
    assert stored(store) == expected(work)


def _fifo(work: Path) -> Path:
    fifo = work / "fifo"
    os.mkfifo(fifo)
    return fifo


REFUSED: list[tuple[str, Callable[[Path], Any], str]] = [
    ("a file outside", lambda work: SECRET, "lies outside where the execution may write"),
    ("a link out", lambda work: _link(work, SECRET), "lies outside where the execution may write"),
    ("a relative way out", lambda work: Path("../../../../../../../etc/passwd"), "lies outside"),
    ("a missing file", lambda work: work / "missing.bin", "cannot be read"),
    ("a directory", lambda work: work, "not a regular file"),
    ("a FIFO", _fifo, "not a regular file"),
]


@pytest.mark.parametrize(("value", "phrase"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_what_is_refused(
    store: LocalDataStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    value: Callable[[Path], Any],
    phrase: str,
) -> None:
    """Before the fix, any readable file the pipeline named was copied into the store."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(OutputRoutingError) as caught:
        route_outputs(spec(), {"o": value(work)}, "run-1", NOW, store, file_roots=[work])
    assert "output 'o'" in str(caught.value) and phrase in str(caught.value)
    assert "return its Path" in str(caught.value)
    assert store.list() == []


def test_only_a_path_marks_a_file() -> None:
    assert file_output_path(Path("x")) == Path("x")
    assert file_output_path({"path": "x"}) is None
    assert file_output_path("x") is None


def test_the_roots_are_the_working_and_temporary_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    assert file_output_roots() == (tmp_path.resolve(), (tmp_path / "t").resolve())
    monkeypatch.chdir("/")  # a process started in / does not open the whole disk
    assert file_output_roots() == ((tmp_path / "t").resolve(),)
