"""The gateway's side of direct dispatch over real TCP on 127.0.0.1 (`gateway.direct.PodLink`),
against a door that answers as a pod's does (`engine.direct`'s protocol), scripted per call:
a refusal, an accepted call that finishes, one whose pod dies after accepting it, calls answered
out of order on one connection, an unreachable pod, a wrong key."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_pipedeploy.gateway.direct import Door, PodDoors, PodLink, PodLost
from prefect_pipedeploy.prefect_api.published import publish_pod_status, status_variable_name
from prefect_pipedeploy.stack import free_port

KEY = "the-key"


@asynccontextmanager
async def scripted_door() -> AsyncIterator[tuple[Door, list[int]]]:
    """A door on a free port; each call's parameters say what to do: {"do": "refuse"},
    {"do": "finish", "after_s": S}, {"do": "die"} (accept, then close the connection).
    Yields the door and the number of connections it took."""
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)

        async def one(call: dict[str, Any]) -> None:
            def say(message: dict[str, Any]) -> None:
                writer.write(json.dumps({"id": call["id"], **message}).encode() + b"\n")

            script = call["parameters"]
            if script["do"] == "refuse":
                say({"refused": "every slot of the pod is taken"})
                return
            run_id = str(uuid.uuid4())
            say({"accepted": run_id})
            if script["do"] == "die":
                await writer.drain()
                writer.close()
                return
            await asyncio.sleep(script.get("after_s", 0))
            say(
                {
                    "finished": run_id,
                    "state": "COMPLETED",
                    "message": None,
                    "outputs": {"n": script.get("n")},
                    "stored": {},
                }
            )

        tasks = set()
        while line := await reader.readline():
            call = json.loads(line)
            if call["key"] != KEY:
                writer.close()
                return
            task = asyncio.create_task(one(call))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Door("127.0.0.1", port, KEY), connections
    finally:
        server.close()


def test_a_refused_call_resolves_to_none_and_the_link_stays_open() -> None:
    async def scenario() -> None:
        async with scripted_door() as (door, _):
            link = PodLink(door)
            call = await link.offer({"do": "refuse"}, [])
            assert await call.accepted is None
            with pytest.raises(PodLost, match="every slot"):
                await call.finished
            assert not link.closed
            await link.close()

    asyncio.run(scenario())


def test_calls_on_one_connection_are_answered_out_of_order() -> None:
    async def scenario() -> None:
        async with scripted_door() as (door, connections):
            link = PodLink(door)
            slow = await link.offer({"do": "finish", "after_s": 0.5, "n": 1}, [])
            fast = await link.offer({"do": "finish", "after_s": 0, "n": 2}, [])
            assert await slow.accepted is not None and await fast.accepted is not None
            done, _ = await asyncio.wait(
                {asyncio.ensure_future(slow.finished), asyncio.ensure_future(fast.finished)},
                return_when=asyncio.FIRST_COMPLETED,
            )
            assert [d.result()["outputs"] for d in done] == [{"n": 2}]
            assert (await slow.finished)["outputs"] == {"n": 1}
            assert len(connections) == 1  # kept open, not one per call
            await link.close()

    asyncio.run(scenario())


def test_a_pod_that_dies_after_accepting_raises_pod_lost_and_the_next_call_reconnects() -> None:
    async def scenario() -> None:
        async with scripted_door() as (door, connections):
            link = PodLink(door)
            doomed = await link.offer({"do": "die"}, [])
            assert await doomed.accepted is not None  # the run exists: the gateway waits on it
            with pytest.raises(PodLost, match="connection to the pod ended"):
                await asyncio.wait_for(doomed.finished, 5)
            assert link.closed
            again = await link.offer({"do": "finish", "n": 3}, [])
            assert (await asyncio.wait_for(again.finished, 5))["outputs"] == {"n": 3}
            assert len(connections) == 2
            await link.close()

    asyncio.run(scenario())


def test_an_unreachable_pod_resolves_to_none() -> None:
    async def scenario() -> None:
        link = PodLink(Door("127.0.0.1", free_port(), KEY))  # nobody listens there
        call = await link.offer({"do": "finish"}, [])
        assert await call.accepted is None
        with pytest.raises(PodLost, match="cannot be reached"):
            await call.finished
        assert link.closed

    asyncio.run(scenario())


def test_a_wrong_key_gets_no_run() -> None:
    async def scenario() -> None:
        async with scripted_door() as (door, _):
            link = PodLink(Door(door.host, door.port, "not-the-key"))
            call = await link.offer({"do": "finish"}, [])
            assert await asyncio.wait_for(call.accepted, 5) is None
            await link.close()

    asyncio.run(scenario())


def test_pod_doors_read_the_published_door_and_look_again_when_it_is_stale(
    prefect_api: str,
) -> None:
    """`PodDoors` against a real Prefect server: a door published for a pod that is gone (a
    stale status) cannot be reached, so the call has the doors read again at once and goes to
    the door published since (a re-created pod); with none that answers, the call takes the
    worker's path (None)."""

    async def scenario() -> None:
        deployment_id = uuid.uuid4()
        async with get_client() as client, scripted_door() as (door, _):
            doors = PodDoors(client)
            stale = {"host": "127.0.0.1", "port": free_port(), "key": KEY}

            async def publish(direct: dict[str, Any]) -> None:
                value = {"status": "up", "direct": direct, "worker": "w1"}
                await publish_pod_status(client, deployment_id, "w1", value)

            await publish(stale)
            assert await doors.offer(deployment_id, 4, {"do": "finish"}, []) is None
            await publish(stale)
            assert await doors.doors(deployment_id, 4)  # read, and kept for DOORS_TTL_S
            await publish({"host": door.host, "port": door.port, "key": KEY})
            call = await doors.offer(deployment_id, 4, {"do": "finish", "n": 7}, [])
            assert call is not None  # the stale door failed, the fresh one was read and taken
            assert (await asyncio.wait_for(call.finished, 5))["outputs"] == {"n": 7}
            await doors.close()
            await client.delete_variable_by_name(status_variable_name(deployment_id, "w1"))

    asyncio.run(scenario())


class CountingReads:
    """A real Prefect client whose `request`s (how `read_status_variables` reads) are counted."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.requests = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await self._client.request(*args, **kwargs)


def test_a_burst_of_calls_shares_one_read_of_the_published_doors(prefect_api: str) -> None:
    """Calls that find the gateway's copy of the doors too old share one read of the statuses
    (before, each of a burst read them itself: 23-26 reads in 3 s in the benchmark's accept
    row); within `DOORS_TTL_S` none reads; after `forget` (a door could not be reached) the
    next calls read again, all of them once."""

    async def scenario() -> None:
        deployment_id = uuid.uuid4()
        async with get_client() as client:
            counted = CountingReads(client)
            doors = PodDoors(counted)  # type: ignore[arg-type]
            door = {"host": "127.0.0.1", "port": 1234, "key": KEY}
            value = {"status": "up", "direct": door, "worker": "w1"}
            await publish_pod_status(client, deployment_id, "w1", value)
            expected = [Door("127.0.0.1", 1234, KEY)]

            burst = await asyncio.gather(*(doors.doors(deployment_id, 4) for _ in range(20)))
            assert burst == [expected] * 20
            assert counted.requests == 1
            again = await asyncio.gather(*(doors.doors(deployment_id, 4) for _ in range(20)))
            assert again == [expected] * 20
            assert counted.requests == 1  # kept for DOORS_TTL_S
            doors.forget(deployment_id)
            after = await asyncio.gather(*(doors.doors(deployment_id, 4) for _ in range(20)))
            assert after == [expected] * 20
            assert counted.requests == 2
            await client.delete_variable_by_name(status_variable_name(deployment_id, "w1"))

    asyncio.run(scenario())
