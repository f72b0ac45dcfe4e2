"""Recovery: runs a dead worker claimed but never started go back to the queue.

For: `recover_abandoned`, which a worker runs when it starts and then every half
`pending_recovery_s` (a worker killed and restarted at once finds its runs Pending for less than
that; they must not wait for the next start): a run Pending for longer than `pending_recovery_s`
whose claimer is gone (`claim_abandoned`) is put back in a Scheduled state named "Recovered" and
starts again like any waiting run. A live worker's claim is left alone however long it waits:
under load a run can stay Pending for a minute (its pod or process retrying a 503 on the Running
write, a slow input download), and re-queuing it made another worker run it a second time.
Not for: runs that crashed while running (their worker or pod reports those), or RAM held by
dead workers (`worker.ram.RamAdmission.release_dead_leases`).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Collection, Mapping
from typing import Any
from uuid import UUID

import psutil
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

from prefect_pipedeploy.worker.dispatch import Claimer, plain_utc

RECOVERED_MESSAGE = "Re-queued: the worker that claimed this execution stopped before starting it"

#: A worker of another machine is taken for dead once it has missed this many heartbeats
#: (Prefect's own rule for marking a worker offline, `INACTIVITY_HEARTBEAT_MULTIPLE`).
MISSED_HEARTBEATS = 3
DEFAULT_HEARTBEAT_S = 30.0


def process_alive(pid: int, started: float) -> bool:
    """Whether the process `pid` of this machine, started at `started`, still runs."""
    try:
        process = psutil.Process(pid)
        return (
            abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def claim_abandoned(
    claimer: Claimer | None,
    me: Claimer | None,
    now: datetime.datetime,
    heartbeats: Mapping[str, tuple[datetime.datetime | None, float]],
    alive: Callable[[int, float], bool] = process_alive,
) -> bool:
    """Whether a claim (the `Claimer` a long-Pending run names) belongs to no live worker.

    `me`: the calling worker (its own claims are abandoned unless it holds them: the caller
    leaves those out); `heartbeats`: the pool's workers, by name, with their last heartbeat and
    heartbeat interval (read only for a claimer of another machine). A claim that names no
    claimer (made by hand, or by an older version) counts as abandoned, as before claims were
    signed.
    """
    if claimer is None or claimer == me:
        return True
    if me is not None and claimer.host == me.host:
        return not alive(claimer.pid, claimer.started)
    last, interval_s = heartbeats.get(claimer.worker, (None, DEFAULT_HEARTBEAT_S))
    if last is None:
        return True
    return (now - plain_utc(last)).total_seconds() > MISSED_HEARTBEATS * interval_s


async def recover_abandoned(
    client: PrefectClient,
    pool: str,
    older_than_s: float,
    logger: Any,
    held: Collection[UUID] = (),
    me: Claimer | None = None,
) -> int:
    """Re-queue the pool's runs left Pending for longer than `older_than_s` by a worker that is
    gone (`claim_abandoned`), except those in `held` (the calling worker's own, `me`); how
    many."""
    now = datetime.datetime.now(datetime.timezone.utc)
    cutoff = now - datetime.timedelta(seconds=older_than_s)
    pending = await client.read_flow_runs(
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING]))
        ),
        limit=200,
    )
    old = [
        (flow_run, Claimer.of(flow_run.state.message))
        for flow_run in pending
        if flow_run.state is not None
        and plain_utc(flow_run.state.timestamp) <= cutoff
        and flow_run.id not in held
    ]
    heartbeats: dict[str, tuple[datetime.datetime | None, float]] = {}
    if any(c is not None and (me is None or c.host != me.host) for _, c in old):
        heartbeats = {
            worker.name: (
                worker.last_heartbeat_time,
                float(worker.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_S),
            )
            for worker in await client.read_workers_for_work_pool(pool)
        }
    recovered = 0
    for flow_run, claimer in old:
        if not claim_abandoned(claimer, me, now, heartbeats):
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
