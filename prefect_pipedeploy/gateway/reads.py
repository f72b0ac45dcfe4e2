"""Reads the gateway shares between the calls it is creating executions for.

For: `FreshReads` (one read per key at a time, shared by every call that asked before it
began: a call never gets a value read before it asked, and a burst of N calls costs two reads,
not N) and `WaitingExecutions` (how many executions of a deployment wait, for the gateway's
limit: Prefect's count, read through `FreshReads`, plus this gateway's own creates that count
may not hold yet). Before, each worker's-path call read the count and the deployment itself,
three requests to the server per accepted call where the create is one. `direct.PodDoors`
reads the pods' published doors through `FreshReads` too, once its copy is too old. Not for:
the endpoint table (`service.Gateway.endpoints`, a TTL cache).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar
from uuid import UUID

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FreshReads(Generic[K, V]):
    """`read(key)`, one at a time per key, shared: a caller waits for the first read to begin
    after it asked (never joins one already under way) and gets its value or its exception,
    as does every caller that asked before that read began. A caller that leaves does not end
    the read for the others."""

    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        self._running: dict[K, asyncio.Future[V]] = {}
        self._next: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K) -> V:
        upcoming = self._next.get(key)
        if upcoming is None:
            upcoming = self._next[key] = asyncio.ensure_future(self._after_running(key))
            upcoming.add_done_callback(_retrieved)
        return await asyncio.shield(upcoming)

    async def _after_running(self, key: K) -> V:
        running = self._running.get(key)
        if running is not None:
            await asyncio.wait([running])
        del self._next[key]  # from here on a caller waits for the read after this one
        read = self._running[key] = asyncio.ensure_future(self._read(key))
        try:
            return await read
        finally:
            if self._running.get(key) is read:
                del self._running[key]


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a shared read's exception as seen: its callers may all have left."""
    if not future.cancelled():
        future.exception()


class WaitingExecutions:
    """Executions of a deployment that wait (Scheduled, Pending), as the gateway's limit
    counts them: Prefect's count (`count(deployment_id)`, shared through `FreshReads`) plus
    this gateway's creates that had not ended when that count began (in flight then, or begun
    since). A create that ends while the count runs may be in both: the sum may be over by the
    creates in flight, never under by this gateway's own. Other gateways' creates are in the
    next count. Before, concurrent calls each read the count and none saw the others' creates,
    so a burst could pass the limit by as many creates as went at once."""

    def __init__(self, count: Callable[[UUID], Awaitable[int]]) -> None:
        self._count = count
        self._begun: Counter[UUID] = Counter()  # creates begun and not failed
        self._made: Counter[UUID] = Counter()  # creates that ended with a run
        self._reads: FreshReads[UUID, tuple[int, int]] = FreshReads(self._read)

    async def _read(self, deployment_id: UUID) -> tuple[int, int]:
        made_before = self._made[deployment_id]  # before the count's request: it holds these
        return await self._count(deployment_id), made_before

    async def read(self, deployment_id: UUID) -> tuple[int, int]:
        """Prefect's count, read after this call asked; for `waiting`."""
        return await self._reads.get(deployment_id)

    def waiting(self, deployment_id: UUID, read: tuple[int, int]) -> int:
        """How many wait now, by `read`: to be checked, and `creating` entered, with no await
        in between (calls that shared the read each see the creates of those before them)."""
        counted, made_before = read
        return counted + self._begun[deployment_id] - made_before

    @contextlib.contextmanager
    def creating(self, deployment_id: UUID) -> Iterator[None]:
        """Count a create from now on; it stays counted if the block ends normally (a run was
        made), not if it raises."""
        self._begun[deployment_id] += 1
        try:
            yield
        except BaseException:
            self._begun[deployment_id] -= 1
            raise
        self._made[deployment_id] += 1
