"""Files the tests look for: what a request left behind, and the data store a test configures.

For: checking that no temporary file (nor an open descriptor on one) outlives a request, and
setting the process's data store (PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE, inherited by the
processes a test starts) for the span of a fixture.
Not for: the stores themselves (tests use the real LocalDataStore and S3DataStore).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from prefect_pipedeploy.datastore.configured import DATA_STORE_VARIABLE, ensure_local_data_store


def leftovers(directory: Path) -> list[str]:
    """Files in `directory`, and descriptors this process holds open on files that were there
    (an unlinked temporary file still takes disk space while it is open)."""
    found = [entry.name for entry in directory.iterdir()]
    for descriptor in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@contextlib.contextmanager
def local_data_store(root: Path, name: str) -> Iterator[str]:
    """A local data store block on `root`, saved as `name` and set as the process's data store
    while the block runs (the previous setting comes back after); yields its reference."""
    before = os.environ.get(DATA_STORE_VARIABLE)
    reference = ensure_local_data_store(root, name)
    os.environ[DATA_STORE_VARIABLE] = reference
    try:
        yield reference
    finally:
        if before is None:
            os.environ.pop(DATA_STORE_VARIABLE, None)
        else:
            os.environ[DATA_STORE_VARIABLE] = before
