"""Recovery: runs a dead worker claimed but never started go back to the queue.

For: `recover_abandoned`, which a worker runs when it starts and then every half
`pending_recovery_s` (a worker killed and restarted at once finds its runs Pending for less than
that; they must not wait for the next start): a run Pending for longer than `pending_recovery_s`
that this worker does not hold belongs to no live worker (a claim is followed by a start within
seconds), so it is put back in a Scheduled state named "Recovered" and starts again like any
waiting run.
Not for: runs that crashed while running (their worker or pod reports those), or RAM held by
dead workers (`worker.ram.RamAdmission.release_dead_leases`).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Collection
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled

from prefect_pipedeploy.worker.dispatch import plain_utc

RECOVERED_MESSAGE = "Re-queued: the worker that claimed this execution stopped before starting it"


async def recover_abandoned(
    client: PrefectClient,
    pool: str,
    older_than_s: float,
    logger: Any,
    held: Collection[UUID] = (),
) -> int:
    """Re-queue the pool's runs left Pending for longer than `older_than_s`, except those in
    `held` (the calling worker's own); how many."""
    cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than_s)
    pending = await client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
        ),
        limit=200,
    )
    recovered = 0
    for flow_run in pending:
        if flow_run.state is None or plain_utc(flow_run.state.timestamp) > cutoff:
            continue
        if flow_run.id in held:
            continue
        with contextlib.suppress(Exception):  # another worker may have recovered it first
            await client.set_flow_run_state(
                flow_run.id, Scheduled(name="Recovered", message=RECOVERED_MESSAGE), force=True
            )
            recovered += 1
            logger.info(
                "Recovered run %s left Pending", flow_run.id, extra={"action": "run_recovered"}
            )
    return recovered
