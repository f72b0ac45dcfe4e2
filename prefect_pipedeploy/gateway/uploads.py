"""Files uploaded to endpoints: their data-store keys, and their removal after a retention time.

For: `upload_key` (`uploads/<uuid>/<file name>`: the execution's id does not exist yet when the
file is stored), which uploads may go (`expired_uploads`, `uploads_in_use`, pure) and
`sweep_uploads`, which removes them, run by the gateway every `sweep_interval_s` while it serves.
Not for: reading uploads from a body (`bodies`) or downloading them for an execution
(`iomapping`).

Retention (`gateway_upload_retention_s`, 24 h by default): an upload is removed once it is older
than that and no execution that may still read it refers to it. An execution may still read it
while it is not final (Scheduled, Late, Pending, Running, Paused, Cancelling: it has not
downloaded it yet, or a retry will download it again) and for an hour after it failed or
crashed (its worker queues a retry within the `retry_grace_s` setting, 10 s; the hour is a wide
margin). The gateway that stored an upload also deletes it at once when the execution could not
be created. Nothing else removes uploads: workers and executions only read them. An execution
whose upload is gone fails with a message that says so and names the setting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.logging import get_logger

from prefect_pipedeploy.datastore.base import DataStore, ObjectInfo
from prefect_pipedeploy.iomapping import file_input_key

logger = get_logger("prefect_pipedeploy.gateway.uploads")

#: Where uploaded files go in the data store: `uploads/<uuid>/<file name>`.
UPLOADS_PREFIX = "uploads"


#: States in which an execution may still read its uploads.
NOT_FINAL = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
]


#: How long after failing an execution counts as one that may be retried (and read again).
RETRY_MARGIN = timedelta(hours=1)


_PAGE = 200


def upload_key(safe_name: str) -> str:
    """A new key for an uploaded file whose name is already fit for a key."""
    return f"{UPLOADS_PREFIX}/{uuid.uuid4().hex}/{safe_name}"


def sweep_interval_s(retention_s: float) -> float:
    """How often the gateway looks for expired uploads: half the retention, 1 s to 10 min."""
    return min(600.0, max(1.0, retention_s / 2))


def uploads_in_use(runs: Iterable[FlowRun]) -> set[str]:
    """The upload keys the parameters of `runs` refer to (file endpoint inputs' markers)."""
    keys: set[str] = set()
    for run in runs:
        for value in (run.parameters or {}).values():
            key = file_input_key(value)
            if key is not None and key.startswith(UPLOADS_PREFIX + "/"):
                keys.add(key)
    return keys


def expired_uploads(
    objects: Sequence[ObjectInfo], now: datetime, retention_s: float, in_use: set[str]
) -> list[str]:
    """The keys of uploads older than `retention_s` that no execution refers to (`in_use`)."""
    oldest = now - timedelta(seconds=retention_s)
    return [
        info.key
        for info in objects
        if info.key.startswith(UPLOADS_PREFIX + "/")
        and info.last_modified < oldest
        and info.key not in in_use
    ]


async def _read_all(client: PrefectClient, flow_run_filter: FlowRunFilter) -> list[FlowRun]:
    runs: list[FlowRun] = []
    while True:
        page = await client.read_flow_runs(
            flow_run_filter=flow_run_filter, limit=_PAGE, offset=len(runs)
        )
        runs.extend(page)
        if len(page) < _PAGE:
            return runs


async def runs_that_may_read_uploads(client: PrefectClient, now: datetime) -> list[FlowRun]:
    """Every execution not final yet, and those that failed or crashed within `RETRY_MARGIN`
    (of any pool: a store may be shared by gateways of several pools)."""
    waiting = await _read_all(
        client, FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=NOT_FINAL)))
    )
    failed = await _read_all(
        client,
        FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.FAILED, StateType.CRASHED])
            ),
            end_time=FlowRunFilterEndTime(after_=now - RETRY_MARGIN),  # type: ignore[arg-type]
        ),
    )
    return waiting + failed


async def sweep_uploads(
    client: PrefectClient, store: DataStore, now: datetime, retention_s: float
) -> list[str]:
    """Remove the uploads older than `retention_s` that no execution may still read; their
    keys. Executions are read only when some upload is old enough to go."""
    objects = await store.alist(UPLOADS_PREFIX + "/")
    if not expired_uploads(objects, now, retention_s, set()):
        return []
    in_use = uploads_in_use(await runs_that_may_read_uploads(client, now))
    removed: list[str] = []
    for key in expired_uploads(objects, now, retention_s, in_use):
        await store.adelete_object(key, missing_ok=True)
        removed.append(key)
    if removed:
        logger.info(
            "Removed %d endpoint uploads older than %.0f s",
            len(removed),
            retention_s,
            extra={"action": "uploads_removed"},
        )
    return removed
