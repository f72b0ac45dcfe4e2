"""Waiting for executions, for a turn to create one, and the limit on wrong tokens: small
in-memory state.

For: `RunWatcher` (Prefect's event stream says when the executions that requests wait for
change state; one API call reads them all),
`CreateQueue` (the calls waiting for their turn to create an execution: bounded, first come
first served, a caller that leaves gives up its place; its refusals counted by a `Tally`) and
`BadTokenLimiter` (wrong tokens per client over a sliding minute). Not for: when an execution
is settled (`status.settled`).
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
from prefect.client.schemas.objects import TERMINAL_STATES, FlowRun
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import ResourceSpecification
from prefect.logging import get_logger

from prefect_pipedeploy.aio import cancel_and_wait
from prefect_pipedeploy.prefect_api.runs import run_id_of
from prefect_pipedeploy.settings import get_settings
from prefect_pipedeploy.status import settled

logger = get_logger("prefect_pipedeploy.gateway.waiting")

#: How often the gateway reads the executions it waits for while Prefect's event stream is down.
FALLBACK_POLL_S = 0.5

#: How often it reads them anyway while the stream is up (an event lost on the way).
SAFETY_POLL_S = 5.0

#: How soon a run is read again when the read after its final state's event still showed the
#: state before (Prefect's server sends a state's event from inside the transaction that writes
#: the state, so a read right after the event can come before that write is visible), and how
#: many times at most: the write lands within milliseconds; a transaction rolled back after its
#: event never does, and the run is then read at the next safety read.
STALE_RECHECK_S = 0.05
STALE_RECHECKS = 20

#: The flow-run events the watcher listens to: those of a final state, the only ones that can
#: settle a run (a run failed with retries left is read again when its grace ends). Each event
#: is sent to every subscriber it matches, so the server sends a gateway 1 event per execution,
#: not 4 (Scheduled, Pending, Running, the final one) or more.
FINAL_STATES: dict[str, str | list[str]] = {
    "prefect.state-type": sorted(state.value for state in TERMINAL_STATES)
}


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


class Tally:
    """Counts something that can happen hundreds of times a second (a 429) and says when to
    report it: the first time, then at most once per `every_s`, with the count since the last
    report. A burst of refused calls logs a line every `every_s`, not one per call: each line
    through Prefect's console handler costs the gateway about as much as the call itself."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.count = 0
        self._reported_at = -math.inf

    def add(self, now: float) -> int | None:
        """Count one; the count to report now (and start counting afresh), or None."""
        self.count += 1
        if now - self._reported_at < self.every_s:
            return None
        self._reported_at = now
        count, self.count = self.count, 0
        return count


class CreateQueue:
    """The gateway's own queue of calls waiting to create an execution, `concurrency` creates
    at a time.

    Creates do not go all at once: on SQLite each is a write, and a crowd of them only makes
    the server refuse more of them (503, retried). Neither one by one: a create's round trip is
    mostly waiting on the server, and one at a time capped the gateway at about one create per
    round trip while runs executed (issue 14: 0.5/s). Calls take turns first come first served.
    At most `limit` calls hold a place (those creating included); the next is refused at once
    (`QueueFull`), with how long the calls ahead should take by the recent pace of creates. A
    call whose caller disconnects gives up its place while it waits (`CallerGone`; `gone` is
    checked every `check_s`); the call itself checks once more right before it creates.
    """

    def __init__(self, concurrency: int = 1, check_s: float = 0.25) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._check_s = check_s
        self.queued = 0
        self.refused = Tally()
        """The calls refused because the queue was full, reported every so often."""
        self.create_s = 0.5
        """Recent time one turn takes (an exponential average)."""

    def retry_after_s(self) -> int:
        return min(60, max(1, math.ceil(self.queued * self.create_s / self._concurrency)))

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
                self._slots.release()
                self.create_s = 0.8 * self.create_s + 0.2 * (time.monotonic() - started)
        finally:
            self.queued -= 1

    async def _wait_for_turn(self, gone: Callable[[], Awaitable[bool]]) -> None:
        acquire = asyncio.ensure_future(self._slots.acquire())
        try:
            while True:
                done, _ = await asyncio.wait({acquire}, timeout=self._check_s)
                if done:
                    return
                if await gone():
                    raise CallerGone()
        except BaseException:
            if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                self._slots.release()
            else:
                acquire.cancel()
            raise


@dataclass
class _Watch:
    max_retries: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    latest: FlowRun | None = None
    waiters: int = 0
    recheck_at: float | None = None
    """When (monotonic) the run is read again: a run that failed with retries left is settled
    then unless it moved; a read that came before its final state's write, soon."""
    event_at: datetime | None = None
    """When the latest final state the event stream announced for the run was entered."""
    stale_reads: int = 0


def read_before_event(run: FlowRun, event_at: datetime | None) -> bool:
    """Whether `run`, as read, shows a state older than the final state whose event came at
    `event_at` (the event's `occurred`, the state's own timestamp): the read came before the
    server's write of that state was visible."""
    if event_at is None or run.state is None or run.state.timestamp is None:
        return False
    return run.state.timestamp < event_at


class RunWatcher:
    """Waits for executions to settle, without polling while Prefect's event stream is up.

    One subscription to the final-state events of the server's flow runs (`FINAL_STATES`)
    serves every waiting request: an event about a watched run has it read (one API call for
    all the runs that moved), and a run settles when `status.settled` says so. A run that
    failed with retries left is read again when its grace ends. While the stream is down (the
    server restarting, or the gateway just started), every watched run is read each
    `fallback_s`; when it comes back, each once more (events sent meanwhile may be lost). Each
    `safety_s` the runs are read even while the stream is up: an event lost on the way costs
    that long, not a hung call.
    """

    def __init__(
        self,
        client: PrefectClient,
        fallback_s: float = FALLBACK_POLL_S,
        safety_s: float = SAFETY_POLL_S,
    ) -> None:
        self._client = client
        self._fallback_s = fallback_s
        self._safety_s = safety_s
        self._watches: dict[UUID, _Watch] = {}
        self._due: set[UUID] = set()
        self._wake = asyncio.Event()
        self._live = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def live(self) -> bool:
        """Whether the event subscription is up (else the watcher polls)."""
        return self._live

    async def wait(
        self, run_id: UUID, max_retries: int, timeout_s: float
    ) -> tuple[FlowRun | None, bool]:
        """The latest state of the run seen, and whether it settled within `timeout_s`."""
        watch = self._watches.setdefault(run_id, _Watch(max_retries))
        watch.waiters += 1
        if not self._tasks or any(task.done() for task in self._tasks):
            await self.close()
            self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._read())]
        self._due.add(run_id)  # read once now: it may have settled before it was watched
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
        tasks, self._tasks = self._tasks, []
        self._live = False
        await cancel_and_wait(*tasks)

    async def _listen(self) -> None:
        event_filter = EventFilter(
            event=EventNameFilter(prefix=["prefect.flow-run."]),
            resource=EventResourceFilter(labels=ResourceSpecification(FINAL_STATES)),
        )
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    self._live = True
                    self._due.update(self._watches)  # what moved while the stream was down
                    self._wake.set()
                    async for event in subscriber:
                        run_id = run_id_of(event)
                        watch = self._watches.get(run_id) if run_id is not None else None
                        if run_id is not None and watch is not None:
                            watch.event_at = max(watch.event_at or event.occurred, event.occurred)
                            watch.stale_reads = 0
                            self._due.add(run_id)
                            self._wake.set()
            except Exception as exc:  # the server is away: the watcher polls meanwhile
                logger.debug("The flow-run event stream ended (%s); polling", exc)
            finally:
                self._live = False
            self._wake.set()
            await asyncio.sleep(self._fallback_s)

    async def _read(self) -> None:
        last_full = time.monotonic()
        while True:
            now = time.monotonic()
            pending = {i for i, w in self._watches.items() if not w.done.is_set()}
            rechecks = {
                i for i in pending if (at := self._watches[i].recheck_at) is not None and at <= now
            }
            full = not self._live or now - last_full >= self._safety_s
            ids = list(pending if full else pending & (self._due | rechecks))
            self._due.clear()
            if full:
                last_full = now
            if ids and not await self._read_runs(ids):
                await asyncio.sleep(1.0)
            self._wake.clear()
            if self._due:
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._next_read_in(last_full))

    def _next_read_in(self, last_full: float) -> float:
        now = time.monotonic()
        if not self._live:
            return self._fallback_s
        moments = [last_full + self._safety_s]
        moments += [w.recheck_at for w in self._watches.values() if w.recheck_at is not None]
        return max(0.01, min(moments) - now)

    async def _read_runs(self, ids: list[UUID]) -> bool:
        """Read the runs, settle their watches; False when the API did not answer."""
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            try:
                runs = await self._client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)),
                    limit=len(chunk),
                )
            except Exception as exc:  # the API is away: the waiters time out into 303s
                logger.warning(
                    "Could not read the state of %d executions: %s",
                    len(chunk),
                    exc,
                    extra={"action": "poll_failed"},
                )
                return False
            now = datetime.now(timezone.utc)
            grace_s = get_settings().retry_grace_s
            for run in runs:
                watch = self._watches.get(run.id)
                if watch is None:
                    continue
                watch.latest = run
                watch.recheck_at = None
                if settled(run, watch.max_retries, now, grace_s):
                    watch.done.set()
                elif run.state is not None and run.state.is_final():  # failed, may be retried
                    left_s = grace_s - (now - run.state.timestamp).total_seconds()
                    watch.recheck_at = time.monotonic() + max(0.0, left_s) + 0.05
                elif read_before_event(run, watch.event_at) and watch.stale_reads < STALE_RECHECKS:
                    # before: no event would come again, and the call waited for the next
                    # safety read (up to SAFETY_POLL_S)
                    watch.stale_reads += 1
                    watch.recheck_at = time.monotonic() + STALE_RECHECK_S
                else:
                    watch.event_at = None
        return True
