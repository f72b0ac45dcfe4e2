"""The reads the gateway shares between calls (`gateway.reads`): never older than the call,
one at a time per key, errors to every sharer; the waiting count with the gateway's own
creates."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

import pytest

from prefect_pipedeploy.gateway.reads import FreshReads, WaitingExecutions

pytestmark = pytest.mark.anyio


class Store:
    """A value that changes, read slowly: each read records when it began and what it saw."""

    def __init__(self) -> None:
        self.value = 0
        self.began: list[int] = []  # the value when each read began
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def read(self, key: str) -> int:
        seen = self.value
        self.began.append(seen)
        await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return seen


async def test_a_burst_of_callers_costs_two_reads_and_none_gets_an_older_value() -> None:
    store = Store()
    reads = FreshReads(store.read)
    store.gate.clear()
    first = asyncio.ensure_future(reads.get("k"))
    await asyncio.sleep(0.01)  # the first read is under way
    store.value = 1  # what every later caller must see at least
    later = [asyncio.ensure_future(reads.get("k")) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert store.began == [0]  # the later callers do not start reads of their own meanwhile
    store.gate.set()
    assert await first == 0
    assert await asyncio.gather(*later) == [1] * 20
    assert store.began == [0, 1]


async def test_keys_read_apart() -> None:
    store = Store()
    reads = FreshReads(store.read)
    assert await asyncio.gather(reads.get("a"), reads.get("b")) == [0, 0]
    assert len(store.began) == 2


async def test_callers_one_after_another_each_read() -> None:
    store = Store()
    reads = FreshReads(store.read)
    for value in range(3):
        store.value = value
        assert await reads.get("k") == value
    assert store.began == [0, 1, 2]


async def test_an_error_reaches_every_sharer_and_the_next_caller_reads_again() -> None:
    store = Store()
    reads = FreshReads(store.read)
    store.fail = LookupError("gone")
    answers = await asyncio.gather(*(reads.get("k") for _ in range(5)), return_exceptions=True)
    assert [type(a) for a in answers] == [LookupError] * 5
    store.fail = None
    assert await reads.get("k") == 0
    assert len(store.began) == 2


async def test_a_caller_that_leaves_does_not_end_the_read_for_the_others() -> None:
    store = Store()
    reads = FreshReads(store.read)
    store.gate.clear()
    leaving, staying = asyncio.ensure_future(reads.get("k")), asyncio.ensure_future(reads.get("k"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    store.gate.set()
    assert await staying == 0
    assert leaving.cancelled() and store.began == [0]


async def test_a_read_every_caller_left_is_not_reported_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store()
    store.fail = LookupError("gone")
    reads = FreshReads(store.read)
    store.gate.clear()
    caller = asyncio.ensure_future(reads.get("k"))
    await asyncio.sleep(0.01)
    caller.cancel()
    store.gate.set()
    await asyncio.sleep(0.05)
    assert "never retrieved" not in caplog.text


class Counted:
    """Prefect's side of the waiting count: runs that exist, and count reads held open."""

    def __init__(self) -> None:
        self.runs = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    async def count(self, deployment_id: UUID) -> int:
        self.reads += 1
        seen = self.runs
        await self.gate.wait()
        return seen


DEPLOYMENT = uuid.UUID(int=1)


async def create(waiting: WaitingExecutions, prefect: Counted, fail: bool = False) -> None:
    with waiting.creating(DEPLOYMENT):
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("refused")
        prefect.runs += 1


@pytest.mark.parametrize(
    ("made", "failed", "expected"),
    [
        (0, 0, 0),
        (3, 0, 3),  # ended before the count: in it, not added again
        (2, 2, 2),  # failed creates are no waiting runs
    ],
)
async def test_the_count_holds_creates_that_ended_before_it(
    made: int, failed: int, expected: int
) -> None:
    prefect = Counted()
    waiting = WaitingExecutions(prefect.count)
    for _ in range(made):
        await create(waiting, prefect)
    for _ in range(failed):
        with pytest.raises(RuntimeError):
            await create(waiting, prefect, fail=True)
    assert waiting.waiting(DEPLOYMENT, await waiting.read(DEPLOYMENT)) == expected


async def test_creates_in_flight_and_begun_after_the_count_are_added() -> None:
    prefect = Counted()
    waiting = WaitingExecutions(prefect.count)
    in_flight = asyncio.ensure_future(create(waiting, prefect))
    await asyncio.sleep(0)  # begun, not ended
    prefect.gate.clear()
    count = asyncio.ensure_future(waiting.read(DEPLOYMENT))
    await asyncio.sleep(0)  # the count began
    with waiting.creating(DEPLOYMENT):  # one more begins while it runs
        prefect.gate.set()
        # 0 counted + the one in flight + the one begun since
        assert waiting.waiting(DEPLOYMENT, await count) == 2
    await in_flight


async def test_a_burst_stays_within_the_limit() -> None:
    """Twelve calls at once, a limit of 5: those that see fewer than 5 waiting create; never
    more than the limit, where calls that each read the count alone all passed it."""
    prefect = Counted()
    waiting = WaitingExecutions(prefect.count)
    limit = 5

    async def call() -> bool:
        read = await asyncio.gather(waiting.read(DEPLOYMENT))  # as the gateway: in a task
        if waiting.waiting(DEPLOYMENT, read[0]) >= limit:
            return False
        await create(waiting, prefect)
        return True

    accepted = await asyncio.gather(*(call() for _ in range(12)))
    assert 1 <= sum(accepted) <= limit and prefect.runs == sum(accepted)
    assert prefect.reads <= 2
