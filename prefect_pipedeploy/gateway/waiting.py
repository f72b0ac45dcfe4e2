"""Waiting for executions, and the limit on wrong tokens: small in-memory state.

For: `RunWatcher` (one API call per tick serves every request waiting for an execution) and
`BadTokenLimiter` (wrong tokens per client over a sliding minute). Not for: when an execution
is settled (`status.settled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.logging import get_logger

from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.status import settled

logger = get_logger("prefect_pipedeploy.gateway.waiting")

#: How often the gateway asks the API for the state of the executions it waits for.
POLL_INTERVAL_S = 0.15


class BadTokenLimiter:
    """Wrong tokens per client over a sliding minute; past the limit the client waits."""

    window_s = 60.0
    max_clients = 10_000

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def record(self, client: str, now: float) -> None:
        self._seen.setdefault(client, deque()).append(now)
        if len(self._seen) > self.max_clients:
            for known in list(self._seen):
                self._forget_old(known, now)

    def retry_after(self, client: str, now: float, limit: int) -> int | None:
        """Seconds until `client` may try again, or None when it may now."""
        if client not in self._seen:
            return None
        times = self._forget_old(client, now)
        if len(times) < limit:
            return None
        return max(1, math.ceil(times[-limit] + self.window_s - now))

    def _forget_old(self, client: str, now: float) -> deque[float]:
        times = self._seen[client]
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._seen[client]
        return times


@dataclass
class _Watch:
    max_retries: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    latest: FlowRun | None = None
    waiters: int = 0


class RunWatcher:
    """Waits for executions to settle: one API call per tick serves every waiting request."""

    def __init__(self, client: PrefectClient, interval_s: float = POLL_INTERVAL_S) -> None:
        self._client = client
        self._interval_s = interval_s
        self._watches: dict[UUID, _Watch] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait(
        self, run_id: UUID, max_retries: int, timeout_s: float
    ) -> tuple[FlowRun | None, bool]:
        """The latest state of the run seen, and whether it settled within `timeout_s`."""
        watch = self._watches.setdefault(run_id, _Watch(max_retries))
        watch.waiters += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll())
        self._wake.set()
        try:
            await asyncio.wait_for(watch.done.wait(), timeout=max(timeout_s, 0.001))
        except asyncio.TimeoutError:
            pass
        finally:
            watch.waiters -= 1
            if watch.waiters == 0:
                self._watches.pop(run_id, None)
        return watch.latest, watch.done.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _poll(self) -> None:
        while self._watches:
            self._wake.clear()
            pending = [run_id for run_id, w in self._watches.items() if not w.done.is_set()]
            for start in range(0, len(pending), 200):
                ids = pending[start : start + 200]
                try:
                    runs = await self._client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                        limit=len(ids),
                    )
                except Exception as exc:  # the API is away: the waiters time out into 303s
                    logger.warning(
                        "Could not read the state of %d executions: %s",
                        len(ids),
                        exc,
                        extra={"action": "poll_failed"},
                    )
                    await asyncio.sleep(1.0)
                    break
                now = datetime.now(timezone.utc)
                grace_s = get_settings().retry_grace_s
                for run in runs:
                    watch = self._watches.get(run.id)
                    if watch is None:
                        continue
                    watch.latest = run
                    if settled(run, watch.max_retries, now, grace_s):
                        watch.done.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
