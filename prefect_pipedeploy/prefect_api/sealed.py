"""Secret inputs kept out of flow-run parameters: each value sealed in a Prefect `Secret` block.

For: the values of inputs mapped with `is_secret`. `runs.create_execution` (how the gateway
and `run_deployment` create an execution) calls `seal_inputs`: each secret value goes into a
`Secret` block named `pipedeploy-sealed-<hex>` (stored obfuscated by Prefect, shown as
`********` in the UI) and the run's parameters hold only the reference `pipedeploy-sealed:<hex>`,
so the value is in no flow run, event or log. The run calls `unseal_inputs` before it resolves
its inputs; the worker calls `discard` once the run is final (succeeded, or failed with no retry
left), deleting the blocks.
Not for: masking values in records and events (`iomapping`, `gateway` do that).

Each run carries a tag `pipedeploy-sealed:<hex>` per sealed value; `sweep_sealed` (the worker
runs it now and then) deletes the values whose run no longer exists (deleted before it ran),
once they are older than an hour (a run is created within moments of its values).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from collections.abc import Mapping
from typing import Any

from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from prefect_pipedeploy.exceptions import (
    InputResolutionError,
)
from prefect_pipedeploy.spec import DeploymentSpec

REFERENCE_PREFIX = "pipedeploy-sealed:"


BLOCK_PREFIX = "pipedeploy-sealed-"


def secret_inputs(spec: DeploymentSpec) -> list[str]:
    """The pipeline inputs whose values are secret and come with the call (endpoint inputs)."""
    return [
        source.pipeline_input_name
        for source in spec.inputs_mapping
        if source.is_secret and source.endpoint_input_name is not None
    ]


def sealed_key(value: Any) -> str | None:
    """The block key a parameter value refers to, if it is a sealed reference."""
    if isinstance(value, str) and value.startswith(REFERENCE_PREFIX):
        key = value.removeprefix(REFERENCE_PREFIX)
        if key and all(c in "0123456789abcdef" for c in key):
            return key
    return None


def sealed_keys(parameters: Mapping[str, Any] | None) -> list[str]:
    """The block keys of every sealed reference among a run's parameters."""
    return [key for value in (parameters or {}).values() if (key := sealed_key(value))]


async def seal_inputs(
    client: PrefectClient, spec: DeploymentSpec, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """`parameters` with each secret input's value replaced by a reference to a sealed copy.

    If sealing one fails, those sealed before it are discarded again.
    """
    sealed = dict(parameters)
    made: list[str] = []
    try:
        for name in secret_inputs(spec):
            if name in sealed and sealed_key(sealed[name]) is None:
                key = uuid.uuid4().hex
                block: Secret[str] = Secret(value=SecretStr(json.dumps(sealed[name])))
                await block.asave(BLOCK_PREFIX + key, client=client)
                made.append(key)
                sealed[name] = REFERENCE_PREFIX + key
    except BaseException:
        await discard(client, made)
        raise
    return sealed


async def unseal_inputs(
    client: PrefectClient, spec: DeploymentSpec, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """`parameters` with each sealed secret input read back; a lost one is an input error."""
    unsealed = dict(parameters)
    for name in secret_inputs(spec):
        key = sealed_key(unsealed.get(name))
        if key is None:
            continue
        try:
            loaded: Secret[str] = await Secret.aload(BLOCK_PREFIX + key, client=client)
        except ValueError:
            raise InputResolutionError(
                f"secret input {name!r} is no longer available (its sealed value "
                f"{BLOCK_PREFIX + key!r} was deleted); call the endpoint again"
            ) from None
        # the JSON text as sealed (Secret.get() would decode it once already)
        unsealed[name] = json.loads(str(loaded.value.get_secret_value()))
    return unsealed


async def discard(client: PrefectClient, keys: list[str]) -> None:
    """Delete sealed values (those already gone are fine)."""
    for key in keys:
        with contextlib.suppress(Exception):
            await Secret.adelete(BLOCK_PREFIX + key, client=client)


def sealed_tag(key: str) -> str:
    """The tag that names a sealed value on its run."""
    return REFERENCE_PREFIX + key


async def sweep_sealed(client: PrefectClient, older_than_s: float = 3600) -> int:
    """Delete the sealed values (older than `older_than_s`) whose run no longer exists; how many."""
    documents = await client.read_block_documents_by_type("secret", include_secrets=False)
    cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than_s)
    swept = 0
    for document in documents:
        name = document.name or ""
        created = document.created
        if not name.startswith(BLOCK_PREFIX) or created is None or created > cutoff:
            continue
        key = name.removeprefix(BLOCK_PREFIX)
        runs = await client.count_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[sealed_tag(key)]))
        )
        if runs == 0:
            with contextlib.suppress(ObjectNotFound):
                await client.delete_block_document(document.id)  # type: ignore[arg-type]
                swept += 1
    return swept
