"""Code shipping's packing and fetching (`datastore.code`), against a real local data store in
a temporary directory: which files ship, the same digest for the same files, the size limit,
and a fetch that verifies the digest, reuses its cache and refuses unsafe archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.datastore import LocalDataStore
from prefect_pipedeploy.datastore.code import (
    PULL_STEP,
    code_key,
    fetch_code,
    folder_files,
    pack_folder,
    pull_step,
    shipped_code,
)
from prefect_pipedeploy.exceptions import CodeArchiveError, SpecError


def make_folder(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "shipped"),
    [
        ({"pipe.py": "", "lib/util.py": ""}, ["lib/util.py", "pipe.py"]),
        # default excludes: caches, virtualenvs, version control
        (
            {
                "pipe.py": "",
                "__pycache__/pipe.cpython-311.pyc": "",
                "lib/__pycache__/x.pyc": "",
                ".venv/lib/site.py": "",
                ".git/HEAD": "",
                "node_modules/a.js": "",
                "stale.pyc": "",
            },
            ["pipe.py"],
        ),
        # the folder's .gitignore and .pipedeployignore, with Git's negation
        (
            {
                "pipe.py": "",
                ".gitignore": "data/\n*.ckpt\n",
                ".pipedeployignore": "notes.md\n!keep.ckpt\n",
                "data/big.csv": "",
                "model.ckpt": "",
                "keep.ckpt": "",
                "notes.md": "",
            },
            [".gitignore", ".pipedeployignore", "keep.ckpt", "pipe.py"],
        ),
    ],
)
def test_which_files_ship(tmp_path: Path, files: dict[str, str], shipped: list[str]) -> None:
    assert folder_files(make_folder(tmp_path, files)) == shipped


def test_the_same_files_pack_to_the_same_digest_whatever_their_times(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "code", {"pipe.py": "x = 1\n", "lib/util.py": "y = 2\n"})
    first = pack_folder(folder, directory=tmp_path)
    os.utime(folder / "pipe.py", (time.time() - 3600, time.time() - 3600))
    second = pack_folder(folder, directory=tmp_path)
    (folder / "pipe.py").write_text("x = 2\n")
    changed = pack_folder(folder, directory=tmp_path)
    assert first.sha256 == second.sha256 != changed.sha256
    assert first.files == 2 and first.key == code_key(first.sha256)
    assert first.key == f"code/{first.sha256}.tar.gz"
    for packed in (first, second, changed):
        packed.path.unlink()


def test_a_folder_over_the_limit_is_refused_naming_the_folder_and_the_fix(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "code", {"pipe.py": ""})
    (folder / "weights.bin").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(SpecError) as raised:
        pack_folder(folder, max_bytes=16 * 1024, directory=tmp_path)
    message = str(raised.value)
    assert str(folder) in message
    assert "PREFECT_INTEGRATIONS_PIPEDEPLOY_CODE_MAX_MIB" in message
    assert ".pipedeployignore" in message
    assert list(tmp_path.glob("pipedeploy-code-*")) == []  # the partial archive is removed


@pytest.mark.parametrize(
    ("files", "problem"),
    [({}, "no file to ship"), ({".gitignore": "*\n"}, "no file to ship")],
)
def test_a_folder_with_nothing_to_ship_is_refused(
    tmp_path: Path, files: dict[str, str], problem: str
) -> None:
    folder = make_folder(tmp_path / "code", files)
    folder.mkdir(exist_ok=True)
    with pytest.raises(SpecError, match=problem):
        pack_folder(folder, directory=tmp_path)


def stored(tmp_path: Path, files: dict[str, str]) -> tuple[LocalDataStore, str, str]:
    store = LocalDataStore(root=str(tmp_path / "store"))
    packed = pack_folder(make_folder(tmp_path / "code", files), directory=tmp_path)
    store.upload(packed.path, packed.key)
    packed.path.unlink()
    return store, packed.key, packed.sha256


def test_fetch_unpacks_once_and_reuses_its_cache(tmp_path: Path) -> None:
    store, key, sha256 = stored(tmp_path, {"pipe.py": "x = 1\n", "lib/util.py": "y = 2\n"})
    cache = tmp_path / "cache"
    folder = fetch_code(store, key, sha256, "'local'", cache)
    assert folder == cache / sha256
    assert (folder / "lib" / "util.py").read_text() == "y = 2\n"
    store.delete_object(key)  # a second run of the machine needs no store
    assert fetch_code(store, key, sha256, "'local'", cache) == folder
    assert sorted(p.name for p in cache.iterdir()) == [sha256]  # no work folder left


def test_fetch_refuses_an_archive_whose_digest_changed(tmp_path: Path) -> None:
    store, key, sha256 = stored(tmp_path, {"pipe.py": ""})
    other = tmp_path / "other.tar.gz"
    other.write_bytes(b"not the archive")
    store.upload(other, key)
    with pytest.raises(CodeArchiveError) as raised:
        fetch_code(store, key, sha256, "'local'", tmp_path / "cache")
    assert f"not the {sha256}" in str(raised.value)
    assert "update_deployment" in str(raised.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_of_a_missing_archive_says_so(tmp_path: Path) -> None:
    store = LocalDataStore(root=str(tmp_path / "store"))
    with pytest.raises(CodeArchiveError, match="is missing from data store 'local'"):
        fetch_code(store, code_key("0" * 64), "0" * 64, "'local'", tmp_path / "cache")


def escaping_member() -> tarfile.TarInfo:
    member = tarfile.TarInfo("../escaped.py")
    member.size = 1
    return member


def link_member() -> tarfile.TarInfo:
    member = tarfile.TarInfo("passwd")
    member.type = tarfile.SYMTYPE
    member.linkname = "/etc/passwd"
    return member


@pytest.mark.parametrize(
    ("member", "problem"),
    [(escaping_member, "unsafe member '../escaped.py'"), (link_member, "unsafe member 'passwd'")],
)
def test_fetch_refuses_an_archive_reaching_outside_its_folder(
    tmp_path: Path, member: Any, problem: str
) -> None:
    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb") as zipped,
        tarfile.open(fileobj=zipped, mode="w") as tar,
    ):
        info = member()
        tar.addfile(info, io.BytesIO(b"x") if info.isfile() else None)
    data = raw.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    store = LocalDataStore(root=str(tmp_path / "store"))
    store.upload(io.BytesIO(data), code_key(sha256))
    with pytest.raises(CodeArchiveError, match=re.escape(problem)):
        fetch_code(store, code_key(sha256), sha256, "'local'", tmp_path / "cache")
    assert not (tmp_path / "escaped.py").exists()
    assert not (tmp_path / "cache" / sha256).exists()


def test_the_pull_step_records_key_digest_and_store(tmp_path: Path) -> None:
    packed = pack_folder(make_folder(tmp_path / "code", {"pipe.py": ""}), directory=tmp_path)
    packed.path.unlink()
    step = pull_step(packed, "pipedeploy-local-data-store/default")
    assert step == {
        PULL_STEP: {
            "key": packed.key,
            "sha256": packed.sha256,
            "data_store": "pipedeploy-local-data-store/default",
        }
    }
    other = {"prefect.deployments.steps.set_working_directory": {"directory": "/x"}}
    assert shipped_code([other, step]) == step[PULL_STEP]
    assert shipped_code([other]) is None
    assert shipped_code(None) is None


@pytest.mark.parametrize("has_data_filter", [True, False])
def test_fetch_unpacks_with_or_without_pythons_data_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_data_filter: bool
) -> None:
    """Images often have Python 3.11.2, whose tarfile has no `filter` (3.11.4 added it)."""
    if not has_data_filter:
        monkeypatch.delattr(tarfile, "data_filter")
    store, key, sha256 = stored(tmp_path, {"pipe.py": "x = 1\n", "lib/util.py": "y = 2\n"})
    folder = fetch_code(store, key, sha256, "'local'", tmp_path / "cache")
    assert (folder / "lib" / "util.py").read_text() == "y = 2\n"
