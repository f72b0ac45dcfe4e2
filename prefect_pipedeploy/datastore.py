"""Data stores: where pipelines' input and output files live, as Prefect blocks.

For: storing, fetching, listing, describing and deleting whole files ("objects") by key, in a
local directory (`LocalDataStore`, the default of the local stack) or in an S3 bucket
(`S3DataStore`, through boto3; MinIO and other S3-compatible servers work with `endpoint_url`).
Both are Prefect blocks: create one in the Prefect UI or with `.save(name)`, load it with
`LocalDataStore.load(name)` / `S3DataStore.load(name)`, or `Block.load("<block type slug>/<name>")`
where either may come. Make the block types known to a Prefect API with
`register_datastore_blocks()`.
Not for: resolving a deployment's inputs and outputs (the io mapping does that with these
blocks), partial reads, appends or folders: a key names one whole object.

Guarantees:
- Keys are relative, `/`-separated and checked by `validate_key` (no `..`, no absolute paths,
  no empty segments, backslashes or control characters); they can never reach outside the
  store's root directory or S3 prefix.
- An object is fully written or absent. Local: the bytes go to a temporary file in the target's
  directory that `os.replace` moves into place. S3: one PUT up to `multipart_threshold_mib`,
  above it a multipart upload that is completed only once every part is in and is aborted on
  any error.
- Integrity. S3 objects carry the sha256 of their content in `x-amz-meta-sha256`: it is computed
  in a first pass over the source, and the upload pass hashes again and refuses to complete if
  the source changed in between. Downloads verify it and raise `DataStoreIntegrityError` without
  leaving anything at the destination. Objects written by other tools have no sha256 and are
  downloaded unverified. The local store keeps no sidecar files: `info()` computes the sha256 by
  reading the file, so it can never go stale (atomic replacement means the bytes on disk are
  the bytes written).
- Memory stays bounded: copies stream in 1 MiB chunks, S3 holds at most one part (or one
  single-PUT object) in memory, and a non-seekable source is spooled to a temporary file first
  because the hash pass must read it twice.
- Downloads to a path go to a temporary file beside it that is renamed into place; a file-like
  destination receives bytes only once they are verified (they are spooled first).

Every operation has an async form (`aupload`) and a sync twin (`upload`). The work itself is
blocking file and boto3 I/O: the async forms run it in a worker thread.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import math
import os
import re
import secrets
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, Union, cast

import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from prefect_pipedeploy.exceptions import PipeDeployError

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
CHUNK_SIZE = MiB
MAX_KEY_BYTES = 1024  # S3's limit on a whole key, prefix included
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
PARTIAL_PREFIX = ".pipedeploy-partial-"  # temporary files of unfinished writes
RESERVED_PREFIX = ".pipedeploy-"  # key segments starting so are the store's own


class BinaryReader(Protocol):
    """What an upload reads: an open binary file, `io.BytesIO`, a response body..."""

    def read(self, size: int = ..., /) -> bytes: ...


class BinaryWriter(Protocol):
    """Where a download writes: an open binary file, `io.BytesIO`..."""

    def write(self, data: bytes, /) -> object: ...


Source = Union[str, "os.PathLike[str]", BinaryReader]
Destination = Union[str, "os.PathLike[str]", BinaryWriter]


# -- errors -------------------------------------------------------------------------------------


class DataStoreError(PipeDeployError):
    """The data store cannot do this; the message names the store and what to check."""


class InvalidDataStoreKey(DataStoreError, ValueError):
    """A key is not a safe relative `/`-separated path; use one like `inputs/2024/data.csv`."""


class DataStoreObjectNotFound(DataStoreError, LookupError):
    """No object has this key in the store; check the key against the store's listing."""


class DataStoreIntegrityError(DataStoreError):
    """An object's content does not match its recorded sha256; upload it again."""


# -- keys -------------------------------------------------------------------------------------

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_KEY_FIX = "use a relative key of `/`-separated names such as 'inputs/2024/data.csv'"


def validate_key(key: str) -> str:
    """Check that `key` is a safe object key and return it normalized (`.` segments dropped).

    A key is a relative path of `/`-separated names: not empty, no leading `/`, no empty, `..`
    or `.pipedeploy-*` segments, no backslashes or control characters, at most 1024 bytes.
    Raises `InvalidDataStoreKey` naming the key, the rule it breaks and how to fix it.
    """
    if not isinstance(key, str):
        raise InvalidDataStoreKey(f"data store key {key!r} is not a string; {_KEY_FIX}")

    def refuse(reason: str) -> InvalidDataStoreKey:
        return InvalidDataStoreKey(f"data store key {key!r} {reason}; {_KEY_FIX}")

    if key == "":
        raise refuse("is empty")
    if _CONTROL_CHARACTERS.search(key):
        raise refuse("contains a NUL or another control character")
    if "\\" in key:
        raise refuse("contains a backslash (keys use `/` between names)")
    if key.startswith("/"):
        raise refuse("is absolute (starts with `/`)")
    segments = [segment for segment in key.split("/") if segment != "."]
    if not segments:
        raise refuse("is empty")
    if "" in segments:
        raise refuse("has an empty segment (`//` or a trailing `/`)")
    if ".." in segments:
        raise refuse("has a `..` segment, which would leave the store")
    if any(segment.startswith(RESERVED_PREFIX) for segment in segments):
        raise refuse(f"has a segment starting with {RESERVED_PREFIX!r}, reserved for the store")
    normalized = "/".join(segments)
    if len(normalized.encode()) > MAX_KEY_BYTES:
        raise refuse(f"is longer than {MAX_KEY_BYTES} bytes")
    return normalized


def _validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key, or a key followed by `/`."""
    if prefix == "":
        return ""
    try:
        if prefix.endswith("/"):
            return validate_key(prefix[:-1]) + "/"
        return validate_key(prefix)
    except InvalidDataStoreKey as exc:
        raise InvalidDataStoreKey(f"listing prefix {prefix!r} is not usable: {exc}") from None


# -- object info --------------------------------------------------------------------------------


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


# -- streams ------------------------------------------------------------------------------------


def _read_exactly(stream: BinaryReader, size: int, what: str) -> bytes:
    """Read `size` bytes (fewer only at the end), however short the stream's own reads are."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        try:
            chunk = stream.read(remaining)
        except OSError as exc:
            raise DataStoreError(f"cannot read {what}: {exc}; nothing was written") from exc
        if isinstance(chunk, str):
            raise TypeError(f"{what} is a text stream; open it in binary mode ('rb')")
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _write_all(stream: BinaryWriter, data: bytes, what: str) -> None:
    try:
        stream.write(data)
    except OSError as exc:
        raise DataStoreError(
            f"cannot write {what}: {exc}; free some disk space or pick another destination"
        ) from exc


def _copy_hashing(
    source: BinaryReader, destination: BinaryWriter | None, *, reading: str, writing: str
) -> tuple[str, int]:
    """Copy `source` to `destination` (if any) in chunks; return the sha256 hex and the size."""
    digest = hashlib.sha256()
    size = 0
    while chunk := _read_exactly(source, CHUNK_SIZE, reading):
        digest.update(chunk)
        size += len(chunk)
        if destination is not None:
            _write_all(destination, chunk, writing)
    return digest.hexdigest(), size


@contextmanager
def _atomic_file(path: Path, what: str) -> Iterator[IO[bytes]]:
    """A temporary file beside `path` that replaces it on success and vanishes on any error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
        # os.open with mode 0o666 lets the umask decide the permissions, as for any new file.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise DataStoreError(
            f"cannot create {what} at {path}: {exc}; check that the directory is writable"
        ) from exc
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            try:
                file.flush()
                os.fsync(file.fileno())
            except OSError as exc:
                raise DataStoreError(
                    f"cannot write {what} at {path}: {exc}; free some disk space"
                ) from exc
        try:
            os.replace(temporary, path)
        except OSError as exc:
            raise DataStoreError(
                f"cannot put {what} in place at {path}: {exc}; check that it is not a folder"
            ) from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def _open_source(source: Source, key: str) -> Iterator[BinaryReader]:
    if not isinstance(source, (str, os.PathLike)):
        yield source
        return
    try:
        file = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataStoreError(
            f"cannot upload {key!r}: the source file {os.fspath(source)!r} cannot be read"
            f" ({exc.strerror}); check the path"
        ) from exc
    with file:
        yield file


# -- the interface ------------------------------------------------------------------------------


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
        """Where the objects are, for messages: a directory or an S3 URL and endpoint."""

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
            f"no object {key!r} in the data store {self.location()}; check the key against"
            " the store's listing"
        )


# -- local directory ----------------------------------------------------------------------------


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

    def _root(self) -> Path:
        return Path(self.root).expanduser().absolute()

    def _path(self, key: str) -> Path:
        """The file of `key`, refused if a symbolic link would lead it out of the root."""
        root = self._root()
        path = root / key
        if not path.resolve().is_relative_to(root.resolve()):
            raise InvalidDataStoreKey(
                f"data store key {key!r} leads out of the root directory {root} through a"
                " symbolic link; use a key that stays inside the root"
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
                f"cannot {action} {key!r} in the local data store {self.location()}: {exc};"
                " check that the directory exists and this process may read and write it"
            ) from exc

    def _folder_conflict(self, key: str) -> DataStoreError:
        return DataStoreError(
            f"cannot store {key!r} in the local data store {self.location()}: the key, or a"
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
                    source, file, reading=f"the source of {key!r}", writing=str(path)
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
                file, destination, reading=f"object {key!r} at {path}", writing="the destination"
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


# -- S3 -----------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _s3_client(
    endpoint_url: str | None,
    region_name: str | None,
    addressing_style: str,
    aws_access_key_id: str | None,
    aws_secret_access_key: str | None,
    aws_session_token: str | None,
) -> Any:
    """One boto3 S3 client per connection settings, shared by threads (clients are thread-safe,
    sessions are not: each client gets its own session). Missing credentials come from the
    standard AWS environment, read when the client is first made."""
    session = boto3.session.Session(
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
        aws_session_token=aws_session_token,
        region_name=region_name,
    )
    config = Config(
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard", "max_attempts": 3},
        s3={"addressing_style": addressing_style},
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def _is_seekable(stream: BinaryReader) -> bool:
    try:
        return bool(stream.seekable())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def _seekable(source: BinaryReader, key: str) -> Iterator[IO[bytes]]:
    """`source` itself if it can be read twice, else a temporary copy of it."""
    if _is_seekable(source):
        yield cast(IO[bytes], source)
        return
    with tempfile.TemporaryFile() as spool:
        _copy_hashing(source, spool, reading=f"the source of {key!r}", writing="a temporary file")
        spool.seek(0)
        yield spool


_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
}


class S3DataStore(DataStore):
    """A data store in an S3 bucket (AWS S3, MinIO or any S3-compatible server), via boto3.

    Each key is an object under `prefix`. Uploads record the content's sha256 in the object's
    metadata (`x-amz-meta-sha256`) and downloads verify it.
    """

    _block_type_name = "PipeDeploy S3 Data Store"
    _block_type_slug = "pipedeploy-s3-data-store"
    _code_example = """
    ```python
    from prefect_pipedeploy.datastore import S3DataStore

    store = S3DataStore(bucket="ml-data", prefix="pipedeploy/prod", region_name="eu-west-1")
    store.upload("model.pkl", "models/model.pkl")
    store.download("models/model.pkl", "/tmp/model.pkl")
    ```
    """

    bucket: str = Field(
        title="Bucket",
        description="Name of the S3 bucket holding the objects; it must exist already.",
        examples=["ml-data"],
    )
    prefix: str = Field(
        default="",
        title="Key prefix",
        description=(
            "Folder inside the bucket for this store's objects, such as 'pipedeploy/prod';"
            " empty for the whole bucket."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        title="Endpoint URL",
        description=(
            "URL of an S3-compatible server such as MinIO ('http://127.0.0.1:9000');"
            " empty for AWS S3."
        ),
    )
    region_name: str | None = Field(
        default=None,
        title="Region",
        description="AWS region of the bucket, such as 'eu-west-1'; empty for the environment's.",
    )
    aws_access_key_id: SecretStr | None = Field(
        default=None,
        title="Access key id",
        description=(
            "Empty to take credentials from the standard AWS environment (AWS_* variables,"
            " profile, instance or pod role)."
        ),
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None,
        title="Secret access key",
        description="Secret of the access key id; set both or neither.",
    )
    aws_session_token: SecretStr | None = Field(
        default=None,
        title="Session token",
        description="Only for temporary credentials, together with the key id and secret.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        title="Addressing style",
        description=(
            "How the bucket appears in URLs: 'path' suits MinIO and most S3-compatible servers."
        ),
    )
    multipart_threshold_mib: int = Field(
        default=16,
        ge=5,
        le=1024,
        title="Multipart threshold (MiB)",
        description=(
            "Objects up to this size go in one PUT, held in memory meanwhile; larger ones in parts."
        ),
    )
    multipart_part_size_mib: int = Field(
        default=16,
        ge=5,
        le=1024,
        title="Part size (MiB)",
        description=(
            "Size of each part of a multipart upload, one held in memory at a time; raised"
            " automatically for objects that would need more than 10,000 parts."
        ),
    )

    @field_validator("bucket")
    @classmethod
    def _bucket_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", value):
            raise ValueError(
                f"bucket {value!r} is not a bucket name: give the name only, 3 or more letters,"
                " digits, '.', '-' or '_' such as 'ml-data' (no 's3://'), and put folders in"
                " `prefix`"
            )
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        value = value.strip("/")
        if value == "":
            return value
        try:
            return validate_key(value)
        except InvalidDataStoreKey as exc:
            raise ValueError(f"prefix {value!r} is not a safe folder: {exc}") from exc

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"endpoint_url {value!r} is not an http(s) URL; give one such as"
                " 'http://127.0.0.1:9000', or leave it empty for AWS S3"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_are_complete(self) -> S3DataStore:
        has_id = self.aws_access_key_id is not None
        has_secret = self.aws_secret_access_key is not None
        if has_id != has_secret:
            raise ValueError(
                "aws_access_key_id and aws_secret_access_key go together: set both, or neither"
                " to use the AWS environment's credentials"
            )
        if self.aws_session_token is not None and not has_id:
            raise ValueError(
                "aws_session_token needs aws_access_key_id and aws_secret_access_key as well"
            )
        return self

    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    # -- helpers

    def _client(self) -> Any:
        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        return _s3_client(
            self.endpoint_url,
            self.region_name,
            self.addressing_style,
            reveal(self.aws_access_key_id),
            reveal(self.aws_secret_access_key),
            reveal(self.aws_session_token),
        )

    def _key_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _full_key(self, key: str) -> str:
        full_key = self._key_prefix() + key
        if len(full_key.encode()) > MAX_KEY_BYTES:
            raise InvalidDataStoreKey(
                f"data store key {key!r} is too long: with the prefix {self.prefix!r} it exceeds"
                f" S3's {MAX_KEY_BYTES} bytes; use a shorter key"
            )
        return full_key

    @contextmanager
    def _boto_errors(self, action: str, key: str | None) -> Iterator[None]:
        """Translate botocore errors into the data store's, naming the object and the fix."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, action, key) from exc

    def _translate(
        self, exc: ClientError | BotoCoreError, action: str, key: str | None
    ) -> DataStoreError:
        target = f"object {key!r} in {self.location()}" if key is not None else self.location()
        failed = f"cannot {action} {target}"
        endpoint = self.endpoint_url or f"AWS S3 ({self.region_name or 'default region'})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _NOT_FOUND_CODES and key is not None:
                return self._not_found(key)
            if code == "NoSuchBucket":
                return DataStoreError(
                    f"{failed}: the bucket {self.bucket!r} does not exist at {endpoint}; create"
                    " it, or fix `bucket` on the block"
                )
            if code in _DENIED_CODES:
                return DataStoreError(
                    f"{failed}: access denied ({code}); check the block's credentials (or the"
                    " AWS environment's) and the bucket's policy"
                )
            return DataStoreError(f"{failed}: S3 answered {code}: {error.get('Message', exc)}")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return DataStoreError(
                f"{failed}: no AWS credentials found; set aws_access_key_id and"
                " aws_secret_access_key on the block, or AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY in the environment"
            )
        if isinstance(exc, ChecksumError):
            return DataStoreIntegrityError(
                f"{failed}: the content failed its checksum in transit ({exc}); retry, and"
                " upload the object again if it persists"
            )
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
            return DataStoreError(
                f"{failed}: the S3 endpoint {endpoint} is unreachable or dropped the connection"
                f" ({exc}); check that the server is running and that endpoint_url and"
                " region_name on the block are right"
            )
        return DataStoreError(f"{failed}: {exc}")

    def _source_changed(self, key: str) -> DataStoreError:
        return DataStoreError(
            f"cannot upload {key!r} to {self.location()}: the source changed while it was being"
            " uploaded (two reads of it differ); nothing was stored, upload it once it is complete"
        )

    def _object_info_from(self, key: str, response: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            last_modified=response["LastModified"],
            sha256=response.get("Metadata", {}).get("sha256"),
        )

    # -- the operations

    def _write_object(self, key: str, source: BinaryReader) -> ObjectInfo:
        full_key = self._full_key(key)
        with _seekable(source, key) as stream, self._boto_errors("upload", key):
            start = stream.tell()
            sha256, size = _copy_hashing(
                stream, None, reading=f"the source of {key!r}", writing="nothing"
            )
            stream.seek(start)
            if size <= self.multipart_threshold_mib * MiB:
                self._put_whole(key, full_key, stream, size, sha256)
            else:
                self._put_in_parts(key, full_key, stream, size, sha256)
            head = self._client().head_object(Bucket=self.bucket, Key=full_key)
        return self._object_info_from(key, head)

    def _put_whole(
        self, key: str, full_key: str, stream: IO[bytes], size: int, sha256: str
    ) -> None:
        body = _read_exactly(stream, size + 1, f"the source of {key!r}")
        if len(body) != size or hashlib.sha256(body).hexdigest() != sha256:
            raise self._source_changed(key)
        self._client().put_object(
            Bucket=self.bucket, Key=full_key, Body=body, Metadata={"sha256": sha256}
        )

    def _put_in_parts(
        self, key: str, full_key: str, stream: IO[bytes], size: int, sha256: str
    ) -> None:
        """A multipart upload, completed only if the parts hash to `sha256`, else aborted."""
        client = self._client()
        part_size = max(self.multipart_part_size_mib * MiB, math.ceil(size / MAX_PARTS))
        upload_id = client.create_multipart_upload(
            Bucket=self.bucket, Key=full_key, Metadata={"sha256": sha256}
        )["UploadId"]
        try:
            digest = hashlib.sha256()
            parts: builtins.list[dict[str, Any]] = []
            while chunk := _read_exactly(stream, part_size, f"the source of {key!r}"):
                digest.update(chunk)
                number = len(parts) + 1
                response = client.upload_part(
                    Bucket=self.bucket,
                    Key=full_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
            if digest.hexdigest() != sha256:
                raise self._source_changed(key)
            client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(full_key, upload_id)
            raise

    def _abort(self, full_key: str, upload_id: str) -> None:
        """Abort an unfinished multipart upload so that none of its parts stay behind."""
        try:
            self._client().abort_multipart_upload(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            logger.warning(
                "Could not abort the unfinished multipart upload %s of s3://%s/%s (%s); its"
                " parts stay stored until removed: abort it by hand or give the bucket an"
                " AbortIncompleteMultipartUpload lifecycle rule",
                upload_id,
                self.bucket,
                full_key,
                exc,
                extra={"action": "datastore_abort_failed"},
            )

    def _read_object(self, key: str, destination: BinaryWriter) -> ObjectInfo:
        full_key = self._full_key(key)
        with self._boto_errors("download", key):
            response = self._client().get_object(Bucket=self.bucket, Key=full_key)
            body = response["Body"]
            try:
                sha256, size = _copy_hashing(
                    body, destination, reading=f"object {key!r}", writing="the destination"
                )
            finally:
                body.close()
        recorded = response.get("Metadata", {}).get("sha256")
        if recorded is not None and recorded.lower() != sha256:
            raise DataStoreIntegrityError(
                f"object {key!r} in {self.location()} is corrupt: its content has sha256"
                f" {sha256} but {recorded} was recorded when it was uploaded; nothing was"
                " written to the destination: upload the object again"
            )
        return ObjectInfo(key=key, size=size, last_modified=response["LastModified"], sha256=sha256)

    def _list_objects(self, prefix: str, page_size: int) -> builtins.list[ObjectInfo]:
        base = self._key_prefix()
        request: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": base + prefix,
            "MaxKeys": page_size,
        }
        found: builtins.list[ObjectInfo] = []
        with self._boto_errors("list", None):
            while True:
                page = self._client().list_objects_v2(**request)
                for item in page.get("Contents", []):
                    key = item["Key"][len(base) :]
                    if key and not key.endswith("/"):  # skip folder markers
                        found.append(
                            ObjectInfo(
                                key=key, size=item["Size"], last_modified=item["LastModified"]
                            )
                        )
                if not page.get("IsTruncated"):
                    break
                request["ContinuationToken"] = page["NextContinuationToken"]
        return sorted(found, key=lambda info: info.key)

    def _object_info(self, key: str) -> ObjectInfo:
        with self._boto_errors("describe", key):
            head = self._client().head_object(Bucket=self.bucket, Key=self._full_key(key))
        return self._object_info_from(key, head)

    def _object_exists(self, key: str) -> bool:
        try:
            self._object_info(key)
        except DataStoreObjectNotFound:
            return False
        return True

    def _delete_object(self, key: str) -> None:
        with self._boto_errors("delete", key):
            self._client().delete_object(Bucket=self.bucket, Key=self._full_key(key))


# -- registration -------------------------------------------------------------------------------

DATASTORE_BLOCK_TYPES: tuple[type[DataStore], ...] = (LocalDataStore, S3DataStore)


async def aregister_datastore_blocks(client: PrefectClient | None = None) -> None:
    """Make the data store block types known to the current Prefect API (idempotent)."""
    for block_type in DATASTORE_BLOCK_TYPES:
        await block_type.aregister_type_and_schema(client=client)


def register_datastore_blocks() -> None:
    """Sync twin of `aregister_datastore_blocks`."""
    for block_type in DATASTORE_BLOCK_TYPES:
        # `_sync=True` keeps Prefect's dispatching method synchronous even inside an event loop.
        block_type.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
