"""The local data store: objects as files under a root directory.

For: `LocalDataStore`, the default store of the local stack. Not for: S3 (`s3`).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field

from prefect_pipedeploy.datastore.base import DataStore, ObjectInfo
from prefect_pipedeploy.datastore.keys import RESERVED_PREFIX
from prefect_pipedeploy.datastore.streams import (
    BinaryReader,
    BinaryWriter,
    _atomic_file,
    _copy_hashing,
)
from prefect_pipedeploy.exceptions import DataStoreError, InvalidDataStoreKey


class LocalDataStore(DataStore):
    """A data store in a local directory: each key is a file under `root`.

    The default of the local stack. Only processes that see this directory (on this machine or
    a shared mount) can use it.
    """

    _block_type_name = "PipeDeploy Local Data Store"
    _block_type_slug = "pipedeploy-local-data-store"
    _code_example = """
    ```python
    from prefect_pipedeploy.datastore import LocalDataStore

    store = LocalDataStore(root="/srv/pipedeploy/data")
    store.upload("model.pkl", "models/model.pkl")
    store.download("models/model.pkl", "/tmp/model.pkl")
    ```
    """

    root: str = Field(
        title="Root directory",
        description=(
            "Directory holding the objects; created on first upload. Prefer an absolute path:"
            " a relative one resolves against each process's working directory."
        ),
        min_length=1,
        examples=["/srv/pipedeploy/data"],
    )

    def location(self) -> str:
        return str(self._root())

    def public_name(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return f"the data store {name!r}" if name else "the local data store"

    def _root(self) -> Path:
        return Path(self.root).expanduser().absolute()

    def _path(self, key: str) -> Path:
        """The file of `key`, refused if a symbolic link would lead it out of the root."""
        root = self._root()
        path = root / key
        if not path.resolve().is_relative_to(root.resolve()):
            raise InvalidDataStoreKey(
                f"data store key {key!r} leads out of the root directory of "
                f"{self.public_name()} through a symbolic link; use a key that stays inside the"
                " root"
            )
        return path

    @contextmanager
    def _os_errors(self, action: str, key: str) -> Iterator[None]:
        """Translate OS errors on the store's own files."""
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc
        except OSError as exc:
            raise DataStoreError(
                f"cannot {action} {key!r} in {self.public_name()}: {exc.strerror or exc};"
                " check that its directory exists and this process may read and write it"
            ) from exc

    def _folder_conflict(self, key: str) -> DataStoreError:
        return DataStoreError(
            f"cannot store {key!r} in {self.public_name()}: the key, or a"
            " folder on its path, is both an object and a folder here (a local key cannot be"
            " both); pick another key"
        )

    def _write_object(self, key: str, source: BinaryReader) -> ObjectInfo:
        path = self._path(key)
        if path.is_dir():
            raise self._folder_conflict(key)
        try:
            with _atomic_file(path, f"object {key!r}") as file:
                sha256, size = _copy_hashing(
                    source, file, reading=f"the source of {key!r}", writing=f"object {key!r}"
                )
        except DataStoreError as exc:
            if isinstance(exc.__cause__, (NotADirectoryError, FileExistsError)):
                raise self._folder_conflict(key) from exc.__cause__
            raise
        with self._os_errors("describe", key):
            modified = path.stat().st_mtime
        return ObjectInfo(key=key, size=size, last_modified=_utc(modified), sha256=sha256)

    def _read_object(self, key: str, destination: BinaryWriter | None) -> ObjectInfo:
        path = self._path(key)
        with self._os_errors("read", key):
            file = open(path, "rb")  # noqa: SIM115 - closed below
            modified = os.fstat(file.fileno()).st_mtime
        with file:
            sha256, size = _copy_hashing(
                file, destination, reading=f"object {key!r}", writing="the destination"
            )
        return ObjectInfo(key=key, size=size, last_modified=_utc(modified), sha256=sha256)

    def _list_objects(self, prefix: str, page_size: int) -> builtins.list[ObjectInfo]:
        root = self._root()
        real_root = root.resolve()
        found: builtins.list[ObjectInfo] = []
        for folder, folders, files in os.walk(root / prefix.rpartition("/")[0]):
            folders[:] = [name for name in folders if not name.startswith(RESERVED_PREFIX)]
            for name in files:
                path = Path(folder, name)
                key = path.relative_to(root).as_posix()
                if name.startswith(RESERVED_PREFIX) or not key.startswith(prefix):
                    continue
                if not path.resolve().is_relative_to(real_root):
                    continue  # a symbolic link out of the root: not an object of this store
                try:
                    stat = path.stat()
                except OSError:
                    continue  # deleted meanwhile, or a dangling link
                found.append(
                    ObjectInfo(key=key, size=stat.st_size, last_modified=_utc(stat.st_mtime))
                )
        return sorted(found, key=lambda info: info.key)

    def _object_info(self, key: str) -> ObjectInfo:
        # No sidecar: hash the file, which atomic replacement keeps equal to what was written.
        return self._read_object(key, None)

    def _object_exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _delete_object(self, key: str) -> None:
        with self._os_errors("delete", key):
            self._path(key).unlink()


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)
