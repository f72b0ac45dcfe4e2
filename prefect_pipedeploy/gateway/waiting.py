"""Waiting for executions, for a turn to create one, and the limit on wrong tokens: small
in-memory state.

For: `RunWatcher` (one API call per tick serves every request waiting for an execution),
`CreateQueue` (the calls waiting for their turn to create an execution: bounded, first come
first served, a caller that leaves gives up its place) and `BadTokenLimiter` (wrong tokens per
client over a sliding minute). Not for: when an execution is settled (`status.settled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
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

    def forget(self, client: str, at: float) -> None:
        """Take back the wrong token recorded for `client` at `at` (it proved right)."""
        times = self._seen.get(client)
        if times is not None and at in times:
            times.remove(at)
            if not times:
                del self._seen[client]

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


class QueueFull(Exception):
    """The create queue holds its limit of calls; `retry_after_s` is when a place may be free."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} calls wait to create an execution")
        self.queued = queued
        self.retry_after_s = retry_after_s


class CallerGone(Exception):
    """The caller disconnected while its call waited for its turn to create an execution."""


async def never_gone() -> bool:
    """A caller that never leaves (calls made in-process)."""
    return False


class CreateQueue:
    """The gateway's own queue of calls waiting to create an execution, one create at a time.

    The Prefect server takes creates one by one best (SQLite: concurrent ones collide and are
    retried after seconds), so calls take turns, first come first served. At most `limit` calls
    hold a place (the one creating included); the next is refused at once (`QueueFull`), with
    how long the calls ahead should take by the recent pace of creates. A call whose caller
    disconnects gives up its place while it waits (`CallerGone`; `gone` is checked every
    `check_s`); the call itself checks once more right before it creates.
    """

    def __init__(self, check_s: float = 0.25) -> None:
        self._lock = asyncio.Lock()
        self._check_s = check_s
        self.queued = 0
        self.create_s = 0.5
        """Recent time one turn takes (an exponential average)."""

    def retry_after_s(self) -> int:
        return min(60, max(1, math.ceil(self.queued * self.create_s)))

    @contextlib.asynccontextmanager
    async def turn(self, limit: int, gone: Callable[[], Awaitable[bool]]) -> AsyncIterator[None]:
        """Hold a place until it is this call's turn, then the turn for the block."""
        if self.queued >= limit:
            raise QueueFull(self.queued, self.retry_after_s())
        self.queued += 1
        try:
            await self._wait_for_turn(gone)
            started = time.monotonic()
            try:
                yield
            finally:
                self._lock.release()
                self.create_s = 0.8 * self.create_s + 0.2 * (time.monotonic() - started)
        finally:
            self.queued -= 1

    async def _wait_for_turn(self, gone: Callable[[], Awaitable[bool]]) -> None:
        acquire = asyncio.ensure_future(self._lock.acquire())
        try:
            while True:
                done, _ = await asyncio.wait({acquire}, timeout=self._check_s)
                if done:
                    return
                if await gone():
                    raise CallerGone()
        except BaseException:
            if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                self._lock.release()
            else:
                acquire.cancel()
            raise


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
