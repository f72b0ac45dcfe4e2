"""Streams of the data stores: chunked copies that hash, atomic files, seekable sources.

For: the blocking byte-moving helpers both stores share (1 MiB chunks, sha256 on the way, a
temporary file that replaces its target only on success). Not for: keys (`keys`) or the store
interface (`base`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol, Union, cast

from prefect_pipedeploy.datastore.keys import PARTIAL_PREFIX
from prefect_pipedeploy.exceptions import DataStoreError

MiB = 1024 * 1024


CHUNK_SIZE = MiB


class BinaryReader(Protocol):
    """What an upload reads: an open binary file, `io.BytesIO`, a response body..."""

    def read(self, size: int = ..., /) -> bytes: ...


class BinaryWriter(Protocol):
    """Where a download writes: an open binary file, `io.BytesIO`..."""

    def write(self, data: bytes, /) -> object: ...


Source = Union[str, "os.PathLike[str]", BinaryReader]


Destination = Union[str, "os.PathLike[str]", BinaryWriter]


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
    """A temporary file beside `path` that replaces it on success and vanishes on any error.

    Errors name `what`, not `path`: a store's messages reach callers, its directories must not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.parent / f"{PARTIAL_PREFIX}{secrets.token_hex(8)}"
        # os.open with mode 0o666 lets the umask decide the permissions, as for any new file.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise DataStoreError(
            f"cannot create {what}: {exc.strerror or exc}; check that its directory is writable"
        ) from exc
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            try:
                file.flush()
                os.fsync(file.fileno())
            except OSError as exc:
                raise DataStoreError(
                    f"cannot write {what}: {exc.strerror or exc}; free some disk space"
                ) from exc
        try:
            os.replace(temporary, path)
        except OSError as exc:
            raise DataStoreError(
                f"cannot put {what} in place: {exc.strerror or exc}; check that it is not a folder"
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
