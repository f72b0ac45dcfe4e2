"""Byte sources for the data-store tests: random payloads, and streams that misbehave the way
pipes, HTTP bodies and changing files do.

For: uploads from a stream that cannot seek, fails half-way, or changes under a second read.
Not for: the stores themselves (tests use the real LocalDataStore and S3DataStore).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class OneWayStream:
    """A stream that cannot seek and gives short reads, like a pipe or an HTTP body."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self._data = io.BytesIO(data)
        self._fail_at = fail_at

    def read(self, size: int = -1) -> bytes:
        if self._fail_at is not None and self._data.tell() >= self._fail_at:
            raise OSError("the source device went away")
        return self._data.read(min(size, 100_000) if size >= 0 else -1)


class SecondPassTrap(io.BytesIO):
    """A seekable stream that springs `trap` once a read after a rewind passes `offset`.

    S3DataStore reads a seekable source twice: once to hash it, then, rewound, to upload it.
    """

    def __init__(self, data: bytes, offset: int, trap: Callable[[SecondPassTrap], None]) -> None:
        super().__init__(data)
        self.offset = offset
        self.trap = trap
        self.rewound = False

    def seek(self, position: int, whence: int = 0) -> int:
        self.rewound = True
        return super().seek(position, whence)

    def read(self, size: int | None = -1) -> bytes:
        if self.rewound and self.tell() >= self.offset:
            self.trap(self)
        return super().read(size)
