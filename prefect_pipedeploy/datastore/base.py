"""The data store interface: a Prefect block that stores whole files ("objects") by key.

For: `DataStore` (async verbs with sync twins, each running the blocking work of a subclass in a
worker thread) and `ObjectInfo`. Not for: where the bytes live (`local`, `s3`).
"""

from __future__ import annotations

import builtins
import os
import tempfile
from abc import ABC, abstractmethod
from datetime import datetime, timezone
from pathlib import Path

import anyio.to_thread
from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefect_pipedeploy.datastore.keys import _validate_prefix, validate_key
from prefect_pipedeploy.datastore.streams import (
    BinaryReader,
    BinaryWriter,
    Destination,
    Source,
    _atomic_file,
    _copy_hashing,
    _open_source,
)
from prefect_pipedeploy.exceptions import DataStoreObjectNotFound


class ObjectInfo(BaseModel):
    """What the store knows about one object."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(description="The object's key, relative to the store.")
    size: int = Field(ge=0, description="Size of the content in bytes.")
    last_modified: datetime = Field(description="When the object was last written, in UTC.")
    sha256: str | None = Field(
        default=None,
        description=(
            "Hex sha256 of the content. None in listings (ask `info(key)`) and for S3 objects"
            " written by other tools, which record none."
        ),
    )

    @field_validator("last_modified")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("last_modified must carry a time zone; give it in UTC")
        return value.astimezone(timezone.utc)


class DataStore(Block, ABC):
    """Where pipelines read input files and write output files, addressed by keys.

    An interface: use `LocalDataStore` or `S3DataStore`. Load a saved one with
    `S3DataStore.load(name)`, or with `Block.load("pipedeploy-s3-data-store/NAME")` (or
    `pipedeploy-local-data-store/NAME`) where either may come. `delete_object(key)` deletes an
    object; `delete(name)`, as on every block, deletes a saved block document.
    """

    _block_type_name = "PipeDeploy Data Store"
    _block_type_slug = "pipedeploy-data-store"

    # -- the public operations: async forms and their sync twins

    async def aupload(self, source: Source, key: str) -> ObjectInfo:
        """Store `source` (a file path, or a binary file-like read from its current position)
        under `key`, replacing any object there; return what was stored."""
        # The work is blocking file and boto3 I/O: run it in a worker thread.
        return await anyio.to_thread.run_sync(self.upload, source, key)

    def upload(self, source: Source, key: str) -> ObjectInfo:
        """Sync twin of `aupload`."""
        key = validate_key(key)
        with _open_source(source, key) as stream:
            return self._write_object(key, stream)

    async def adownload(self, key: str, destination: Destination) -> ObjectInfo:
        """Write the object at `key` to `destination` (a file path, created with its parent
        directories, or a writable binary file-like); return what was read."""
        # The work is blocking file and boto3 I/O: run it in a worker thread.
        return await anyio.to_thread.run_sync(self.download, key, destination)

    def download(self, key: str, destination: Destination) -> ObjectInfo:
        """Sync twin of `adownload`."""
        key = validate_key(key)
        if isinstance(destination, (str, os.PathLike)):
            with _atomic_file(Path(destination), f"the download of {key!r}") as file:
                return self._read_object(key, file)
        # A stream cannot take bytes back: it gets them only once they are complete and verified.
        with tempfile.TemporaryFile() as spool:
            info = self._read_object(key, spool)
            spool.seek(0)
            _copy_hashing(
                spool, destination, reading="the spooled download", writing="the destination"
            )
        return info

    async def alist(self, prefix: str = "", page_size: int = 1000) -> builtins.list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key (without sha256).

        `page_size` (1 to 1000) is how many keys one S3 request returns; all pages are read.
        """
        # The work is blocking file and boto3 I/O: run it in a worker thread.
        return await anyio.to_thread.run_sync(self.list, prefix, page_size)

    def list(self, prefix: str = "", page_size: int = 1000) -> builtins.list[ObjectInfo]:
        """Sync twin of `alist`."""
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be between 1 and 1000, not {page_size}")
        return self._list_objects(_validate_prefix(prefix), page_size)

    async def ainfo(self, key: str) -> ObjectInfo:
        """Size, modification time and sha256 of the object at `key`."""
        # The work is blocking file and boto3 I/O: run it in a worker thread.
        return await anyio.to_thread.run_sync(self.info, key)

    def info(self, key: str) -> ObjectInfo:
        """Sync twin of `ainfo`."""
        return self._object_info(validate_key(key))

    async def aexists(self, key: str) -> bool:
        """Whether an object has this key."""
        # The work is blocking file and boto3 I/O: run it in a worker thread.
        return await anyio.to_thread.run_sync(self.exists, key)

    def exists(self, key: str) -> bool:
        """Sync twin of `aexists`."""
        return self._object_exists(validate_key(key))

    # Not `delete`/`adelete`: those are Block's class methods that delete a saved block document.
    async def adelete_object(self, key: str, *, missing_ok: bool = False) -> None:
        """Delete the object at `key`; a missing object is an error unless `missing_ok`."""
        # The work is blocking file and boto3 I/O: run it in a worker thread.
        await anyio.to_thread.run_sync(lambda: self.delete_object(key, missing_ok=missing_ok))

    def delete_object(self, key: str, *, missing_ok: bool = False) -> None:
        """Sync twin of `adelete_object`."""
        key = validate_key(key)
        if not self._object_exists(key):
            if missing_ok:
                return
            raise self._not_found(key)
        self._delete_object(key)

    # -- what a backend implements: blocking, on validated keys

    @abstractmethod
    def location(self) -> str:
        """Where the objects are, for the store's operator: a directory or an S3 URL and
        endpoint. Messages use `public_name`: they reach callers, who must not learn paths."""

    def public_name(self) -> str:
        """The store as messages name it: no local path, which they may reach a caller with
        (an execution's failure is an endpoint's answer)."""
        name = getattr(self, "_block_document_name", None)
        return f"the data store {name!r}" if name else f"the data store {self.location()}"

    @abstractmethod
    def _write_object(self, key: str, source: BinaryReader) -> ObjectInfo: ...

    @abstractmethod
    def _read_object(self, key: str, destination: BinaryWriter) -> ObjectInfo:
        """Write the object's bytes to `destination`; raise before returning if they are bad."""

    @abstractmethod
    def _list_objects(self, prefix: str, page_size: int) -> builtins.list[ObjectInfo]: ...

    @abstractmethod
    def _object_info(self, key: str) -> ObjectInfo: ...

    @abstractmethod
    def _object_exists(self, key: str) -> bool: ...

    @abstractmethod
    def _delete_object(self, key: str) -> None: ...

    def _not_found(self, key: str) -> DataStoreObjectNotFound:
        return DataStoreObjectNotFound(
            f"no object {key!r} in {self.public_name()}; check the key against the store's listing"
        )
