"""Data-store keys: what a key may be, checked before any I/O.

For: `validate_key` and the listing-prefix check, so that no key can reach outside a store's
root directory or S3 prefix. Not for: storing anything (`base`, `local`, `s3`).
"""

from __future__ import annotations

import re

from prefect_pipedeploy.exceptions import InvalidDataStoreKey

MAX_KEY_BYTES = 1024  # S3's limit on a whole key, prefix included


PARTIAL_PREFIX = ".pipedeploy-partial-"  # temporary files of unfinished writes


RESERVED_PREFIX = ".pipedeploy-"  # key segments starting so are the store's own


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
