"""The data store a process uses, and the registration of the data store block types.

For: `load_data_store` / `aload_data_store` (the saved block PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE
names, "<block-type-slug>/<name>"), `ensure_local_data_store` (what `pipedeploy up` makes), and
`register_datastore_blocks`. Not for: storing objects (`base`, `local`, `s3`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.blocks.core import Block
from prefect.exceptions import PrefectException

from prefect_pipedeploy.settings import env_name, get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

from prefect_pipedeploy._compat import load_block_sync, register_block_type_sync, save_block_sync
from prefect_pipedeploy.datastore.base import DataStore
from prefect_pipedeploy.datastore.local import LocalDataStore
from prefect_pipedeploy.datastore.s3 import S3DataStore
from prefect_pipedeploy.exceptions import DataStoreNotConfigured

DATASTORE_BLOCK_TYPES: tuple[type[DataStore], ...] = (LocalDataStore, S3DataStore)


async def aregister_datastore_blocks(client: PrefectClient | None = None) -> None:
    """Make the data store block types known to the current Prefect API (idempotent)."""
    for block_type in DATASTORE_BLOCK_TYPES:
        await block_type.aregister_type_and_schema(client=client)


def register_datastore_blocks() -> None:
    """Sync twin of `aregister_datastore_blocks`."""
    for block_type in DATASTORE_BLOCK_TYPES:
        register_block_type_sync(block_type)


DATA_STORE_VARIABLE = env_name("data_store")  # the variable naming the store, for messages


_CONFIGURE_FIX = (
    f"set {DATA_STORE_VARIABLE} to a saved data store block as '<block-type-slug>/<name>': "
    "`pipedeploy up` creates 'pipedeploy-local-data-store/default'; for S3, save an "
    "S3DataStore block (in the Prefect UI or with `.save(name)`) and set the variable to "
    "'pipedeploy-s3-data-store/<name>'"
)


def data_store_reference() -> str | None:
    """The data store block this process uses, from PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE.

    Its value is "<block-type-slug>/<block-document-name>", such as
    "pipedeploy-local-data-store/default" or "pipedeploy-s3-data-store/prod"; None when unset.
    Read each time it is needed, never cached.
    """
    value = (get_settings().data_store or "").strip()
    return value or None


def _check_reference(reference: str | None) -> str:
    reference = reference or data_store_reference()
    if not reference:
        raise DataStoreNotConfigured(f"no data store is configured; {_CONFIGURE_FIX}")
    slug, _, name = reference.partition("/")
    if not slug or not name:
        raise DataStoreNotConfigured(
            f"data store {reference!r} is not a block reference; {_CONFIGURE_FIX}"
        )
    return reference


def _checked_store(reference: str, block: Any) -> DataStore:
    if not isinstance(block, DataStore):
        raise DataStoreNotConfigured(
            f"block {reference!r} is a {type(block).__name__}, not a data store; {_CONFIGURE_FIX}"
        )
    return block


def _missing_block(reference: str, exc: Exception) -> DataStoreNotConfigured:
    return DataStoreNotConfigured(
        f"data store block {reference!r} cannot be loaded ({exc}); {_CONFIGURE_FIX}"
    )


def load_data_store(reference: str | None = None) -> DataStore:
    """The saved data store block `reference` ("<block-type-slug>/<name>"), by default the one
    PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE names; raises `DataStoreNotConfigured`."""
    reference = _check_reference(reference)
    try:
        block = load_block_sync(reference)
    except (ValueError, PrefectException) as exc:
        raise _missing_block(reference, exc) from exc
    return _checked_store(reference, block)


async def aload_data_store(reference: str | None = None, client: Any = None) -> DataStore:
    """Async twin of `load_data_store`; `client` is an optional PrefectClient to load with."""
    reference = _check_reference(reference)
    try:
        with _events_to(client):
            block = await Block.aload(reference, client=client)
    except (ValueError, PrefectException) as exc:
        raise _missing_block(reference, exc) from exc
    return _checked_store(reference, block)


def _events_to(client: Any) -> contextlib.AbstractContextManager[Any]:
    """Prefect's settings naming `client`'s API while a block loads: its `.loaded` event goes
    through Prefect's events client, which reads the settings, not `client`. Without this, a
    client made for a given API (`PipeDeploy(api_url=...)`) in a process with no
    PREFECT_API_URL had Prefect start a temporary server for the event."""
    from prefect.client.base import ServerType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if client is None or PREFECT_API_URL.value() or client.server_type == ServerType.EPHEMERAL:
        return contextlib.nullcontext()
    return temporary_settings(updates={PREFECT_API_URL: str(client.api_url).rstrip("/")})


def _local_store(root: Path) -> LocalDataStore:
    return LocalDataStore(root=str(Path(root).expanduser().resolve()))


def ensure_local_data_store(root: Path, name: str = "default") -> str:
    """Save a local data store block on `root` as `name` (replacing one of that name) and return
    its reference, for PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE. What `pipedeploy up` runs."""
    register_datastore_blocks()
    save_block_sync(_local_store(root), name)
    return f"{LocalDataStore.get_block_type_slug()}/{name}"


async def aensure_local_data_store(root: Path, name: str = "default") -> str:
    """Async twin of `ensure_local_data_store`."""
    await aregister_datastore_blocks()
    await _local_store(root).asave(name, overwrite=True)
    return f"{LocalDataStore.get_block_type_slug()}/{name}"
