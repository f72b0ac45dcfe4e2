"""Code shipping: a pipeline's folder packed once, stored in the data store under its digest,
fetched and verified wherever the pipeline runs.

For: `pack_folder` (a folder -> one gzipped tar in a temporary file, the same bytes for the same
files: sorted, no times or owners; `.gitignore`-style excludes; a size limit), `ship_folder`
(pack, store under `code/<sha256>.tar.gz` unless that key is stored already, and return the
deployment's pull step), and `pull_code`, that pull step: Prefect's `run_steps` calls it in an
elastic run's process and in a pod before they import the pipeline, like
`set_working_directory`. It fetches the archive into a local cache keyed by digest
(`<PREFECT_HOME>/pipedeploy/code/<sha256>`, shared by every run of the machine), verifies the
digest, unpacks it and returns `{"directory": ...}`, where the run then imports from;
`evict_code` removes from that cache what no run used for `code_cache_retention_s` (a worker's
upkeep calls it), never the folder a live process works in.
Not for: deciding where a deployment's code comes from (`sdk.deployments`), loading the
pipeline (`engine.loader`).

Excludes: `DEFAULT_EXCLUDES`, then the lines of the folder's own `.gitignore` and
`.pipedeployignore` (Git's rules, through `pathspec`; a `!pattern` brings a file back). Ignore
files in sub-folders are not read.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.exceptions import (
    CodeArchiveError,
    DataStoreObjectNotFound,
    SpecError,
)
from prefect_pipedeploy.settings import env_name, get_settings

#: The fully qualified name of the pull step, as deployments record it.
PULL_STEP = "prefect_pipedeploy.datastore.code.pull_code"
CODE_PREFIX = "code/"
IGNORE_FILES = (".gitignore", ".pipedeployignore")
#: Never shipped: caches, virtualenvs, version control.
DEFAULT_EXCLUDES = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.py[cod]",
    ".venv/",
    "venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".ipynb_checkpoints/",
    "node_modules/",
    ".DS_Store",
)


@dataclass(frozen=True)
class PackedFolder:
    """A packed folder: the archive's temporary file (the caller removes it), its digest, size
    and file count."""

    path: Path
    sha256: str
    size: int
    files: int

    @property
    def key(self) -> str:
        return code_key(self.sha256)


def code_key(sha256: str) -> str:
    return f"{CODE_PREFIX}{sha256}.tar.gz"


def _excludes(folder: Path) -> pathspec.PathSpec:
    lines = list(DEFAULT_EXCLUDES)
    for name in IGNORE_FILES:
        ignore_file = folder / name
        if ignore_file.is_file():
            lines += ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def folder_files(folder: Path) -> list[str]:
    """The files of `folder` that are shipped, as sorted `/`-separated relative paths.

    Symbolic links to directories are not followed; a link to a file ships the file's content."""
    excludes = _excludes(folder)
    found: list[str] = []
    for root, directories, files in os.walk(folder):
        relative_root = Path(root).relative_to(folder).as_posix()
        prefix = "" if relative_root == "." else f"{relative_root}/"
        directories[:] = sorted(d for d in directories if not excludes.match_file(f"{prefix}{d}/"))
        for name in files:
            relative = f"{prefix}{name}"
            if not excludes.match_file(relative) and (Path(root) / name).is_file():
                found.append(relative)
    return sorted(found)


def _tar_entry(relative: str, source: Path) -> tarfile.TarInfo:
    info = tarfile.TarInfo(relative)
    info.size = source.stat().st_size
    info.mode = 0o755 if os.access(source, os.X_OK) else 0o644
    info.mtime = 0
    return info


def pack_folder(
    folder: Path, max_bytes: int | None = None, directory: Path | None = None
) -> PackedFolder:
    """Pack the shipped files of `folder` into a temporary file (in `directory`); raises a
    `SpecError` naming the folder, its size and the fix when the archive is over `max_bytes`
    (default: the `code_max_mib` setting) or when nothing is left to ship."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise SpecError(
            f"code_folder {str(folder)!r} is not a directory; give the pipeline's folder"
        )
    limit = max_bytes if max_bytes is not None else int(get_settings().code_max_mib * 1024 * 1024)
    files = folder_files(folder)
    if not files:
        raise SpecError(
            f"code_folder {str(folder)!r} has no file to ship (all excluded by "
            f"{', '.join(IGNORE_FILES)} or the default excludes)"
        )
    handle, name = tempfile.mkstemp(prefix="pipedeploy-code-", suffix=".tar.gz", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as zipped:
                with tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for relative in files:
                        source = folder / relative
                        with source.open("rb") as content:
                            tar.addfile(_tar_entry(relative, source), content)
                        if raw.tell() > limit:
                            raise _too_large(folder, raw.tell(), limit)
        size = path.stat().st_size
        if size > limit:
            raise _too_large(folder, size, limit)
        return PackedFolder(path, _sha256_of(path), size, len(files))
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _too_large(folder: Path, size: int, limit: int) -> SpecError:
    return SpecError(
        f"code_folder {str(folder)!r} packs to more than {limit / 1024 / 1024:.0f} MiB "
        f"(at least {size / 1024 / 1024:.1f} MiB compressed), the limit "
        f"({env_name('code_max_mib')}); list what the pipeline does not need (data, models, "
        f"virtualenvs) in {folder / '.pipedeployignore'}, or point code_folder= at a smaller "
        "folder"
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def pull_step(packed: PackedFolder, data_store: str) -> dict[str, Any]:
    """The deployment's pull step for a shipped folder (see `pull_code`)."""
    return {PULL_STEP: {"key": packed.key, "sha256": packed.sha256, "data_store": data_store}}


async def ship_folder(folder: Path, store: DataStore, data_store: str) -> dict[str, Any]:
    """Pack `folder`, store the archive unless its key is stored already (same files, same
    key), and return the pull step that fetches it (`data_store`: the store's block
    reference, which every worker loads from the Prefect API)."""
    packed = pack_folder(folder)
    try:
        if not await store.aexists(packed.key):
            await store.aupload(packed.path, packed.key)
    finally:
        packed.path.unlink(missing_ok=True)
    return pull_step(packed, data_store)


def shipped_code(pull_steps: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The shipped code a deployment's pull steps fetch (key, sha256, data_store), if any."""
    for step in pull_steps or []:
        if PULL_STEP in step and isinstance(step[PULL_STEP], dict):
            return dict(step[PULL_STEP])
    return None


def cache_root() -> Path:
    """Where fetched code is kept on this machine, one folder per digest."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home) / "pipedeploy" / "code"


def fetch_code(store: DataStore, key: str, sha256: str, where: str, root: Path) -> Path:
    """The folder of the archive `key` (digest `sha256`) under `root`, fetched from `store` and
    unpacked unless there already (its time then refreshed: `evict_code` keeps what runs use).
    Raises `CodeArchiveError` when the archive is missing or its digest is not `sha256`
    (`where` names the store in the message)."""
    target = root / sha256
    if target.is_dir():
        try:
            os.utime(target)
            return target
        except FileNotFoundError:  # evicted meanwhile: fetched again below
            pass
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}-", dir=root))
    try:
        archive = work / "code.tar.gz"
        try:
            store.download(key, archive)
        except DataStoreObjectNotFound:
            raise CodeArchiveError(
                f"the pipeline's code archive {key!r} is missing from data store {where}; it "
                "was deleted after the deployment was made: ship the code again with "
                "update_deployment(<name>, pipeline=...)"
            ) from None
        found = _sha256_of(archive)
        if found != sha256:
            raise CodeArchiveError(
                f"the pipeline's code archive {key!r} in data store {where} has digest "
                f"{found}, not the {sha256} the deployment recorded; it was changed after the "
                "deployment was made: ship the code again with update_deployment(<name>, "
                "pipeline=...)"
            )
        unpacked = work / "files"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                _extract_files(tar, unpacked)
        except (tarfile.TarError, OSError) as exc:
            raise CodeArchiveError(
                f"the pipeline's code archive {key!r} in data store {where} cannot be "
                f"unpacked, it is unsafe or damaged ({type(exc).__name__}: {exc}); ship the "
                "code again with update_deployment(<name>, pipeline=...)"
            ) from exc
        try:
            os.rename(unpacked, target)
        except OSError:  # another run of this machine unpacked it meanwhile
            if not target.is_dir():
                raise
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: The cache's folder of one archive is named by its digest; a fetch works in a "."-named one.
_DIGEST_NAME = re.compile(r"^[0-9a-f]{64}$")


def evict_code(root: Path, retention_s: float, now: float | None = None) -> list[Path]:
    """Remove from the code cache `root` what no run used within `retention_s`, and return it:
    each archive's folder last fetched longer ago (its time, refreshed by every fetch), unless
    a live process of this machine works in it (its current directory is in it: a pod imports
    its code once and runs from there for as long as it lives), and the work folders of
    fetches that never finished, as old. Anything else under `root` is left alone."""
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    in_use = working_directories()
    removed = []
    for entry in sorted(root.iterdir()):
        if not (_DIGEST_NAME.match(entry.name) or entry.name.startswith(".")):
            continue
        try:
            if not entry.is_dir() or now - entry.stat().st_mtime < retention_s:
                continue
        except OSError:
            continue
        real = entry.resolve()
        if any(cwd == real or real in cwd.parents for cwd in in_use):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def working_directories() -> set[Path]:
    """The current directories of this machine's processes (those this user may read)."""
    import psutil

    found = set()
    for process in psutil.process_iter():
        try:
            found.add(Path(process.cwd()))
        except (psutil.Error, OSError):
            continue
    return found


def _extract_files(tar: tarfile.TarFile, destination: Path) -> None:
    """Unpack an archive of plain files and folders inside `destination`: a member with an
    absolute path, a `..`, a link or a device is refused (`tarfile.TarError`). Python's own
    "data" filter is used where it exists (3.11.4 and later; images often have 3.11.2)."""
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"unsafe member {member.name!r}")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(destination, filter="data")
    else:
        tar.extractall(destination)  # noqa: S202 - every member was checked above


def pull_code(key: str, sha256: str, data_store: str) -> dict[str, str]:
    """Prefect pull step: the shipped code `key` of data store block `data_store`, fetched and
    verified (`fetch_code`); returns {"directory": folder} for the steps after it and the run."""
    from prefect_pipedeploy.datastore.configured import load_data_store

    store = load_data_store(data_store)
    return {"directory": str(fetch_code(store, key, sha256, repr(data_store), cache_root()))}
