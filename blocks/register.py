"""Register prefect-pipedeploy's block types with the Prefect server, and optionally save a store.

python blocks/register.py
python blocks/register.py local NAME DIR
python blocks/register.py s3 NAME BUCKET [ENDPOINT_URL]
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect_pipedeploy.datastore import S3DataStore, register_datastore_blocks
from prefect_pipedeploy.datastore.configured import ensure_local_data_store


def main(args: list[str]) -> int:
    register_datastore_blocks()
    if not args:
        print("Registered the pipedeploy data store block types.")
        return 0
    kind, name, *rest = args
    if kind == "local" and len(rest) == 1:
        reference = ensure_local_data_store(Path(rest[0]).resolve(), name)
    elif kind == "s3" and len(rest) in (1, 2):
        store = S3DataStore(bucket=rest[0], endpoint_url=rest[1] if len(rest) == 2 else None)
        store.save(name, overwrite=True)
        reference = f"{S3DataStore.get_block_type_slug()}/{name}"
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"Saved. Use it with PREFECT_INTEGRATIONS_PIPEDEPLOY_DATA_STORE={reference}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
