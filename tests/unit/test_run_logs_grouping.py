"""`RunLogs.aflush`'s group commit: concurrent flushes of one event loop share POSTs (pure
concurrency, a stand-in client that records the POSTs; the real server's side is in
tests/integration/test_logs_at_final.py)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from prefect_pipedeploy.engine.runlogs import RunLogs


class RecordingClient:
    def __init__(self, on_post: Any = None) -> None:
        self.posts: list[list[str]] = []
        self.on_post = on_post

    async def create_logs(self, logs: list[dict[str, Any]]) -> None:
        self.posts.append([line["message"] for line in logs])
        await asyncio.sleep(0.01)
        if self.on_post is not None:
            self.on_post(len(self.posts))


def quiet_run_logs() -> RunLogs:
    """A `RunLogs` whose periodic sender never starts (it would open a client of its own: with
    no API configured, Prefect's temporary server); only the flushes here send."""
    run_logs = RunLogs()
    run_logs._thread = threading.Thread(target=lambda: None)
    return run_logs


def line(run: uuid.UUID, message: str) -> dict[str, Any]:
    return {"flow_run_id": str(run), "message": message, "__payload_size__": 10}


def run_in_thread(coroutine: Any, timeout_s: float = 10.0) -> Any:
    """Run `coroutine` on a loop of its own thread; fail if it has not ended within `timeout_s`
    (a loop that spins never yields, so a timeout inside it could not fire)."""
    result: dict[str, Any] = {}

    def target() -> None:
        result["value"] = asyncio.run(coroutine)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "the flushes did not end: the event loop spins or waits"
    return result["value"]


def test_a_flush_asked_for_as_a_post_ends_is_sent_by_the_next_post() -> None:
    # A run asks for its flush in the same turn of the loop as the POST in flight ends, before
    # that POST's end is settled: the flush must lead the next POST, not spin on the ended one
    # (the first version did, and a parallel pod's event loop stopped under load).
    run_logs = quiet_run_logs()
    first, late = uuid.uuid4(), uuid.uuid4()
    run_logs.sink(line(first, "first"))
    tasks: list[asyncio.Task[None]] = []

    async def scenario() -> list[list[str]]:
        def on_post(count: int) -> None:
            if count == 1:  # the late run's first step runs before the POST's end is settled
                run_logs.sink(line(late, "late"))
                tasks.append(asyncio.get_running_loop().create_task(flush(late)))

        client = RecordingClient(on_post)

        async def flush(run: uuid.UUID) -> None:
            await run_logs.aflush(client, run)  # type: ignore[arg-type]

        await flush(first)
        await asyncio.gather(*tasks)
        return client.posts

    assert run_in_thread(scenario()) == [["first"], ["late"]]
    assert run_logs._asked == {}


def test_flushes_asked_for_while_a_post_is_on_its_way_share_the_next_one() -> None:
    run_logs = quiet_run_logs()
    runs = [uuid.uuid4() for _ in range(6)]
    for k, run in enumerate(runs):
        run_logs.sink(line(run, f"run {k}"))

    async def scenario() -> list[list[str]]:
        client = RecordingClient()
        await asyncio.gather(*(run_logs.aflush(client, run) for run in runs))  # type: ignore[arg-type]
        return client.posts

    assert run_in_thread(scenario()) == [["run 0"], [f"run {k}" for k in range(1, 6)]]


def test_a_second_loop_posts_alone_while_the_first_is_open_then_takes_over() -> None:
    # a process has one loop that groups (a pod's); another loop's flushes post alone while
    # the first is open, and once it is closed the next loop takes over (an elastic process
    # runs one loop per run; tests run many)
    run_logs = quiet_run_logs()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for run, message in ((a, "a"), (b, "b"), (c, "c")):
        run_logs.sink(line(run, message))
    client = RecordingClient()
    first_loop = asyncio.new_event_loop()
    try:
        first_loop.run_until_complete(run_logs.aflush(client, a))  # type: ignore[arg-type]
        run_in_thread(run_logs.aflush(client, b))  # type: ignore[arg-type]
        assert run_logs._combining_loop is first_loop
    finally:
        first_loop.close()
    run_in_thread(run_logs.aflush(client, c))  # type: ignore[arg-type]
    assert run_logs._combining_loop is not first_loop
    assert client.posts == [["a"], ["b"], ["c"]]
