"""Fakes for unit tests of code that uses prefect-pipedeploy: yours and ours.

For: `InMemoryDataStore`, a data store that keeps its objects in memory with the same keys,
`ObjectInfo`, sha256, errors and sync and async verbs as `LocalDataStore`, so code that takes a
`DataStore` can be tested without a directory, a bucket or a Prefect server; and
`temporary_settings(**values)`, which overrides prefect-pipedeploy settings for a block the way
`prefect.settings.temporary_settings` does for Prefect's.

    import io

    from prefect_pipedeploy.settings import get_settings
    from prefect_pipedeploy.testing import InMemoryDataStore, temporary_settings

    def publish(store, scores):                       # the code under test takes any DataStore
        store.upload(io.BytesIO(",".join(map(str, scores)).encode()), "scores/latest.csv")

    def test_publish():
        store = InMemoryDataStore()
        publish(store, [1, 2])
        assert store.info("scores/latest.csv").size == 3
        assert [o.key for o in store.list("scores/")] == ["scores/latest.csv"]

    def test_pool():
        with temporary_settings(default_pool="test-pool", poll_seconds=0.5):
            assert get_settings().default_pool == "test-pool"

Not for: integration tests (use a real Prefect server and a `LocalDataStore` or an S3 server),
or sharing objects between processes: an `InMemoryDataStore` keeps its objects in this
process (its copies share them), and a saved and reloaded block starts empty. Settings
overrides do not reach child processes; give those `get_settings().to_environment_variables()`.
"""

from __future__ import annotations

import builtins
import io
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import PrivateAttr

from prefect_pipedeploy.datastore.base import DataStore, ObjectInfo
from prefect_pipedeploy.datastore.streams import BinaryReader, BinaryWriter, _copy_hashing
from prefect_pipedeploy.exceptions import DataStoreError
from prefect_pipedeploy.settings import temporary_settings

__all__ = ["InMemoryDataStore", "temporary_settings"]


@dataclass(frozen=True)
class _Stored:
    content: bytes
    sha256: str
    last_modified: datetime


class _Memory:
    """The objects of one store and their lock. Copies of the store, deep ones included, share
    it, as copies of a `LocalDataStore` share its directory."""

    def __init__(self) -> None:
        self.objects: dict[str, _Stored] = {}
        self.lock = threading.Lock()
        self.location = f"memory://{secrets.token_hex(4)}"

    def __copy__(self) -> _Memory:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Memory:
        return self


class InMemoryDataStore(DataStore):
    """A data store in memory, for unit tests: keys, infos, hashes and errors as in
    `LocalDataStore`, including its rule that a key cannot be both an object and a folder of
    other objects. Thread-safe; the async verbs run in a worker thread like the real ones."""

    _block_type_name = "PipeDeploy In-Memory Data Store"
    _block_type_slug = "pipedeploy-in-memory-data-store"
    _code_example = """
    ```python
    from prefect_pipedeploy.testing import InMemoryDataStore

    store = InMemoryDataStore()
    store.upload("model.pkl", "models/model.pkl")
    store.download("models/model.pkl", "/tmp/model.pkl")
    ```
    """

    _memory: _Memory = PrivateAttr(default_factory=_Memory)

    def location(self) -> str:
        return self._memory.location

    def _folder_conflict(self, key: str) -> DataStoreError:
        # LocalDataStore's rule and words: there a key is a file, which cannot be a folder.
        return DataStoreError(
            f"cannot store {key!r} in the in-memory data store {self.location()}: the key, or"
            " a folder on its path, is both an object and a folder here (as in a local store,"
            " a key cannot be both); pick another key"
        )

    def _conflicts(self, key: str) -> bool:
        """Whether a folder on `key`'s path is an object, or `key` is a folder of objects."""
        segments = key.split("/")
        folders = ("/".join(segments[:end]) for end in range(1, len(segments)))
        return any(folder in self._memory.objects for folder in folders) or any(
            other.startswith(key + "/") for other in self._memory.objects
        )

    def _write_object(self, key: str, source: BinaryReader) -> ObjectInfo:
        with self._memory.lock:
            if self._conflicts(key):
                raise self._folder_conflict(key)
        buffer = io.BytesIO()
        sha256, size = _copy_hashing(
            source, buffer, reading=f"the source of {key!r}", writing="memory"
        )
        stored = _Stored(buffer.getvalue(), sha256, datetime.now(timezone.utc))
        with self._memory.lock:
            if self._conflicts(key):  # another thread stored a conflicting key meanwhile
                raise self._folder_conflict(key)
            self._memory.objects[key] = stored
        return ObjectInfo(key=key, size=size, last_modified=stored.last_modified, sha256=sha256)

    def _read_object(self, key: str, destination: BinaryWriter | None) -> ObjectInfo:
        with self._memory.lock:
            stored = self._memory.objects.get(key)
        if stored is None:
            raise self._not_found(key)
        sha256, size = _copy_hashing(
            io.BytesIO(stored.content),
            destination,
            reading=f"object {key!r} in {self.location()}",
            writing="the destination",
        )
        return ObjectInfo(key=key, size=size, last_modified=stored.last_modified, sha256=sha256)

    def _list_objects(self, prefix: str, page_size: int) -> builtins.list[ObjectInfo]:
        with self._memory.lock:
            found = [(key, s) for key, s in self._memory.objects.items() if key.startswith(prefix)]
        return [
            ObjectInfo(key=key, size=len(s.content), last_modified=s.last_modified)
            for key, s in sorted(found, key=lambda item: item[0])
        ]

    def _object_info(self, key: str) -> ObjectInfo:
        return self._read_object(key, None)

    def _object_exists(self, key: str) -> bool:
        with self._memory.lock:
            return key in self._memory.objects

    def _delete_object(self, key: str) -> None:
        with self._memory.lock:
            if self._memory.objects.pop(key, None) is None:
                raise self._not_found(key)
