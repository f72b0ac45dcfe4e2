"""`aio.cancel_and_wait`: the tasks end, their own end is not raised, a task that ignores its
cancel does not hang the caller, and a cancellation of the caller itself still reaches it
(the `suppress(CancelledError)` it replaces swallowed that)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from prefect_pipedeploy.aio import cancel_and_wait


async def sleeps() -> None:
    await asyncio.sleep(30)


async def fails_when_cancelled() -> None:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        raise ValueError("a close that failed") from None


async def ignores_its_cancel() -> None:
    for _ in range(3):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            continue


async def already_failed() -> None:
    raise ValueError("failed before it was stopped")


@pytest.mark.parametrize(
    ("body", "ends"),
    [
        (sleeps, True),
        (fails_when_cancelled, True),
        (already_failed, True),
        (ignores_its_cancel, False),
    ],
    ids=["cancelled", "fails-when-cancelled", "already-failed", "ignores-its-cancel"],
)
def test_cancel_and_wait_returns_once_the_task_ended_or_the_wait_is_over(
    body: object, ends: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[asyncio.Task[None], float]:
        task = asyncio.create_task(body())  # type: ignore[operator]
        await asyncio.sleep(0.01)
        began = time.monotonic()
        await cancel_and_wait(task, wait_s=0.3)
        took = time.monotonic() - began
        if not ends:
            assert not task.done()
            task.cancel()  # and again: its loop has three turns
            await cancel_and_wait(task, wait_s=0.3)
            await cancel_and_wait(task, wait_s=0.3)
        return task, took

    task, took = asyncio.run(scenario())
    assert task.done()
    if ends:
        assert took < 0.3
    else:
        assert took >= 0.3
        assert "did not end within 0.3 s" in caplog.text


def test_a_stopped_task_s_exception_is_not_reported_as_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        task = asyncio.create_task(fails_when_cancelled())
        await asyncio.sleep(0.01)
        await cancel_and_wait(task)

    asyncio.run(scenario())
    gc.collect()
    assert "exception was never retrieved" not in caplog.text


def test_a_cancellation_of_the_caller_reaches_it() -> None:
    async def scenario() -> str:
        stubborn = asyncio.create_task(ignores_its_cancel())
        await asyncio.sleep(0.01)
        closing = asyncio.create_task(cancel_and_wait(stubborn, wait_s=30))
        await asyncio.sleep(0.05)
        closing.cancel()  # a shutdown or a timeout of whoever is closing
        try:
            await asyncio.wait_for(closing, 2)
        except asyncio.CancelledError:
            outcome = "cancelled"
        else:
            outcome = "returned"
        stubborn.cancel()
        stubborn.cancel()
        await cancel_and_wait(stubborn, wait_s=1)
        return outcome

    assert asyncio.run(scenario()) == "cancelled"


def test_no_task_and_done_tasks_cost_nothing() -> None:
    async def scenario() -> None:
        await cancel_and_wait()
        done = asyncio.create_task(asyncio.sleep(0))
        await done
        await cancel_and_wait(done, done)
        assert not done.cancelled()

    asyncio.run(scenario())
