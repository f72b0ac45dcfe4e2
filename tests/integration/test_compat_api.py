"""The raw endpoints and status codes `_compat` relies on, against a real Prefect server.

A Prefect upgrade that changes them fails here first (see tests/unit/test_compat.py for the
shapes of the private Python API).
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, VariableCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder

from prefect_pipedeploy import _compat

pytestmark = pytest.mark.anyio


async def test_variables_by_prefix(prefect_api: str) -> None:
    prefix = f"compat_{uuid.uuid4().hex[:8]}_"
    async with get_client() as client:
        for name in ("a", "b"):
            await client.create_variable(VariableCreate(name=prefix + name, value={"n": name}))
        await client.create_variable(VariableCreate(name=f"other_{prefix}c", value=1))
        found = await _compat.read_variables_by_prefix(client, prefix)
    assert sorted(v.name for v in found) == [prefix + "a", prefix + "b"]
    assert {v.value["n"] for v in found} == {"a", "b"}


async def test_lease_status_codes(prefect_api: str) -> None:
    name = f"compat-{uuid.uuid4().hex[:8]}"
    holder = ConcurrencyLeaseHolder(type="flow_run", id=uuid.uuid4())
    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=10, slot_decay_per_second=0)
        )
        taken = await client.increment_concurrency_slots_with_lease(
            names=[name], slots=8, mode="concurrency", lease_duration=60, holder=holder
        )
        lease_id = uuid.UUID(taken.json()["lease_id"])
        with pytest.raises(httpx.HTTPStatusError) as full:  # no room for 4 more
            await client.increment_concurrency_slots_with_lease(
                names=[name], slots=4, mode="concurrency", lease_duration=60, holder=holder
            )
        assert _compat.lease_refused(full.value), full.value.response.status_code
        with pytest.raises(httpx.HTTPStatusError) as too_many:  # more than the whole limit
            await client.increment_concurrency_slots_with_lease(
                names=[name], slots=11, mode="concurrency", lease_duration=60, holder=holder
            )
        assert _compat.lease_refused(too_many.value), too_many.value.response.status_code
        await client.release_concurrency_slots_with_lease(lease_id)
        with pytest.raises(httpx.HTTPStatusError) as lost:
            await client.renew_concurrency_lease(lease_id, 60)
        assert _compat.lease_lost(lost.value), lost.value.response.status_code
        await client.delete_global_concurrency_limit_by_name(name)
