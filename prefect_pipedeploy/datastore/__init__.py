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

Modules: `keys` (what a key may be), `streams` (chunked, hashed, atomic copies), `base` (the
`DataStore` interface and `ObjectInfo`), `local`, `s3`, `configured` (the store a process uses,
from PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE, and block registration).
"""

from __future__ import annotations

from prefect_pipedeploy.datastore.base import DataStore, ObjectInfo
from prefect_pipedeploy.datastore.configured import (
    aensure_local_data_store,
    aload_data_store,
    aregister_datastore_blocks,
    data_store_reference,
    ensure_local_data_store,
    load_data_store,
    register_datastore_blocks,
)
from prefect_pipedeploy.datastore.keys import validate_key
from prefect_pipedeploy.datastore.local import LocalDataStore
from prefect_pipedeploy.datastore.s3 import S3DataStore
from prefect_pipedeploy.datastore.streams import Destination, Source

__all__ = [
    "DataStore",
    "Destination",
    "LocalDataStore",
    "ObjectInfo",
    "S3DataStore",
    "Source",
    "aensure_local_data_store",
    "aload_data_store",
    "aregister_datastore_blocks",
    "data_store_reference",
    "ensure_local_data_store",
    "load_data_store",
    "register_datastore_blocks",
    "validate_key",
]
