"""The ledger check every reliability test ends with: what Prefect's API says about a pool.

For: after a fault, every execution the pool accepted has exactly one final state (none left
Pending, Running or Cancelling), each one that did not succeed says why, none ran more often than
its retries allow, and no pool RAM cap slot is still held. Read through the Prefect API, the way a
user would audit it. Not for: checking outputs (each test checks its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy.prefect_api.poolcap import read_pool_ram_cap
from tests.support.eventually import eventually

UNSETTLED = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING, StateType.SCHEDULED)


@dataclass
class Ledger:
    """The executions of a pool, by how they ended."""

    runs: list[FlowRun]
    held_mib: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    @property
    def unsettled(self) -> list[FlowRun]:
        return [r for r in self.runs if r.state is None or r.state.type in UNSETTLED]

    @property
    def silent_failures(self) -> list[FlowRun]:
        """Runs that ended other than Completed without a message saying why."""
        return [
            r
            for r in self.runs
            if r.state is not None
            and r.state.type in (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
            and not (r.state.message or "").strip()
        ]

    def ran_too_often(self, max_attempts: int) -> list[FlowRun]:
        return [r for r in self.runs if r.run_count > max_attempts]

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.by_type.items())) or "no runs"


def read_ledger(pool: str) -> Ledger:
    async def read() -> Ledger:
        async with get_client() as client:
            runs: list[FlowRun] = []
            while True:
                page = await client.read_flow_runs(
                    work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
                    flow_run_filter=FlowRunFilter(),
                    sort=FlowRunSort.ID_DESC,
                    limit=200,
                    offset=len(runs),
                )
                runs += page
                if len(page) < 200:
                    break
            cap = await read_pool_ram_cap(client, pool)
        by_type: dict[str, int] = {}
        for run in runs:
            kind = run.state.type.value if run.state else "NONE"
            by_type[kind] = by_type.get(kind, 0) + 1
        return Ledger(runs, int(cap.active_slots) if cap else 0, by_type)

    return run_coro_as_sync(read())


def check_ledger(pool: str, max_attempts: int = 2, settle_s: float = 60) -> Ledger:
    """Wait (up to `settle_s`) until every execution of the pool is final, then check the rest:
    each failure says why, none ran more than `max_attempts` times, no cap slot is held."""

    def settled() -> Ledger | None:
        ledger = read_ledger(pool)
        return ledger if not ledger.unsettled and ledger.held_mib == 0 else None

    def describe(run: FlowRun) -> dict[str, Any]:
        state = run.state
        return {
            "id": str(run.id),
            "state": state.name if state else None,
            "message": state.message if state else None,
            "run_count": run.run_count,
        }

    try:
        ledger = eventually(settled, settle_s, 0.5, what=f"every execution of pool {pool} final")
    except AssertionError:
        ledger = read_ledger(pool)
        raise AssertionError(
            f"unsettled executions of pool {pool}: {[describe(r) for r in ledger.unsettled]}; "
            f"pool RAM cap held: {ledger.held_mib} MiB"
        ) from None
    assert not ledger.silent_failures, [describe(r) for r in ledger.silent_failures]
    assert not ledger.ran_too_often(max_attempts), [
        describe(r) for r in ledger.ran_too_often(max_attempts)
    ]
    return ledger
