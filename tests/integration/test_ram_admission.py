"""RAM admission in this process against the real server's global concurrency limits.

`RamAdmission` admits against the worker's own capacity, then takes leases on the pool's cap;
these tests drive it directly (no worker process), so every lease it takes, renews and gives
back is seen on the real limit.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from benchmarks.apiproxy import CountingProxy
from prefect_pipedeploy.admission import RamLedger, Request
from prefect_pipedeploy.prefect_api.poolcap import read_pool_ram_cap, set_pool_ram_cap
from prefect_pipedeploy.stack import free_port
from prefect_pipedeploy.worker.ram import RamAdmission

pytestmark = pytest.mark.anyio
NOW = datetime.now(timezone.utc)


def request(key: str, mib: int) -> Request:
    return Request(
        key=f"run:{uuid.uuid5(uuid.NAMESPACE_OID, key)}", mib=mib, label=key, requested_at=NOW
    )


@pytest.fixture
async def client(prefect_api: str) -> AsyncIterator[PrefectClient]:
    async with get_client() as client:
        yield client


@pytest.fixture
async def capped(client: PrefectClient) -> AsyncIterator[str]:
    """A pool name whose RAM cap is 1GiB (removed afterwards)."""
    pool = f"cap-{uuid.uuid4().hex[:8]}"
    await set_pool_ram_cap(client, pool, 1024)
    yield pool
    await set_pool_ram_cap(client, pool, None)


async def held(client: PrefectClient, pool: str) -> int:
    cap = await read_pool_ram_cap(client, pool)
    assert cap is not None
    return int(cap.active_slots)


async def test_the_cap_holds_across_the_requests_of_one_worker(
    client: PrefectClient, capped: str, tmp_path: Path
) -> None:
    admission = RamAdmission(RamLedger(4096), capped, lambda: client, tmp_path)
    a, b, c = request("a", 512), request("b", 512), request("c", 256)
    decisions = await admission.decide([a, b, c], NOW)
    assert [d.admitted for d in decisions] == [True, True, False]
    assert decisions[2].reason.startswith("waiting for 256MiB of RAM: 1GiB of the pool's RAM cap")
    assert await held(client, capped) == 1024
    assert admission.ledger.held == 1024  # the refused one holds nothing locally either
    await admission.release(a.key)
    assert await held(client, capped) == 512
    assert [d.admitted for d in await admission.decide([c], NOW)] == [True]
    assert await held(client, capped) == 768
    await admission.renew_once()  # renewing keeps the same slots
    assert await held(client, capped) == 768
    for key in (b.key, c.key):
        await admission.release(key)
    assert await held(client, capped) == 0
    assert not (tmp_path / f"{os.getpid()}.json").exists()  # nothing left to record


async def test_a_request_larger_than_the_cap_can_never_start(
    client: PrefectClient, capped: str, tmp_path: Path
) -> None:
    admission = RamAdmission(RamLedger(4096), capped, lambda: client, tmp_path)
    (decision,) = await admission.decide([request("huge", 2048)], NOW)
    assert not decision.admitted
    assert decision.reason.startswith(
        "can never start: it needs 2GiB of RAM and the pool's RAM cap"
    )


async def test_leases_of_a_dead_worker_are_given_back(
    client: PrefectClient, capped: str, tmp_path: Path
) -> None:
    dead = RamAdmission(RamLedger(4096), capped, lambda: client, tmp_path)
    await dead.decide([request("left-behind", 768)], NOW)
    assert await held(client, capped) == 768
    # the worker process died: its lease file stays under a pid nobody has
    own_file = next(tmp_path.glob("*.json"))
    own_file.rename(tmp_path / "999999999.json")
    assert json.loads((tmp_path / "999999999.json").read_text())["pool"] == capped
    fresh = RamAdmission(RamLedger(4096), capped, lambda: client, tmp_path)
    assert await fresh.release_dead_leases() == 1
    assert await held(client, capped) == 0
    assert list(tmp_path.glob("*.json")) == []


async def test_without_a_cap_only_the_worker_capacity_counts(
    client: PrefectClient, tmp_path: Path
) -> None:
    admission = RamAdmission(
        RamLedger(1024), f"nocap-{uuid.uuid4().hex[:6]}", lambda: client, tmp_path
    )
    decisions = await admission.decide([request("a", 768), request("b", 512)], NOW)
    assert [d.admitted for d in decisions] == [True, False]
    assert "of 1GiB held" in decisions[1].reason


INCREMENT = ("POST", "/v2/concurrency_limits/increment-with-lease")


async def test_an_api_failure_mid_round_leaves_nothing_held(
    client: PrefectClient, capped: str, tmp_path: Path
) -> None:
    """CI (three workers, a burst): the pool cap's lease of the second run of a round was
    answered 503 past every retry; the round raised, yet the worker's ledger kept both runs and
    the first one's lease: RAM held for runs that never started, and every later run of the
    pool waited for it for good. Now the round raises and holds nothing; the next one admits."""
    increments = 0

    def refuse(method: str, endpoint: str) -> int | None:
        nonlocal increments
        if (method, endpoint) != INCREMENT:
            return None
        increments += 1
        return 503 if increments == 2 else None  # the second run's lease

    proxy = CountingProxy(
        str(client.api_url).removesuffix("/api/"), port=free_port(), refuse=refuse
    )
    proxy.start()
    try:
        with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
            async with PrefectClient(proxy.url("test")) as through:
                admission = RamAdmission(RamLedger(4096), capped, lambda: through, tmp_path)
                a, b = request("first", 256), request("second", 256)
                with pytest.raises(PrefectHTTPStatusError, match="503"):
                    await admission.decide([a, b], NOW)
                assert admission.ledger.held == 0 and admission.leases == {}
                assert await held(client, capped) == 0
                decisions = await admission.decide([a, b], NOW)  # the next round
                assert [d.admitted for d in decisions] == [True, True]
                assert await held(client, capped) == 512
                for key in (a.key, b.key):
                    await admission.release(key)
    finally:
        proxy.stop()
    assert await held(client, capped) == 0
