"""Direct dispatch: the gateway hands an endpoint call straight to the deployment's pod.

For: `PodDoors`, which knows where the low-latency pods take direct calls (the address and key
each worker publishes with its pod's status, `prefect_api.published`, re-read at most every
`DOORS_TTL_S` per deployment, one read at a time shared by the calls that need it), keeps one
connection open per pod, and offers a call to a pod:
`DirectCall.accepted` resolves to the run id the pod created (or None: refused, unreachable:
the call takes the worker's path), `DirectCall.finished` to the pod's report once the run's
final state and logs are stored (or raises `PodLost`: the gateway then waits for the run's state
through Prefect, and the run ends Crashed if the pod died, `runtimes.low_latency`).
Where direct dispatch cannot keep the deployment's rules, the call takes the worker's path: a
queue-mode deployment served by more than one worker (one at a time across them is counted in
Prefect), a pod with every slot taken or with runs of its deployment waiting for it (they must
not be passed). Not for: the pod's side (`engine.direct`), token checks (`service`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.logging import get_logger

from prefect_pipedeploy.aio import cancel_and_wait
from prefect_pipedeploy.engine.direct import LINE_LIMIT_BYTES
from prefect_pipedeploy.gateway.reads import FreshReads
from prefect_pipedeploy.prefect_api.published import read_status_variables
from prefect_pipedeploy.status import PodStatus

logger = get_logger("prefect_pipedeploy.gateway.direct")

#: How old the gateway's knowledge of a deployment's pods may be before a call re-reads it.
DOORS_TTL_S = 1.5

#: How long a connection to a pod may take before the call takes the worker's path.
CONNECT_TIMEOUT_S = 1.0


class PodLost(Exception):
    """The connection to the pod ended before it reported the run final."""


@dataclass(frozen=True)
class Door:
    """Where one pod takes direct calls."""

    host: str
    port: int
    key: str


def doors_of(statuses: list[Any], parallelism: int) -> list[Door]:
    """The pods a call may go to straight, from the workers' published statuses.

    Only pods that are up and publish a door. A queue-mode deployment (parallelism 1) served by
    more than one worker gets none: its one-at-a-time rule is counted in Prefect across the
    workers, which only the worker's path does."""
    doors = []
    for value in statuses:
        if not isinstance(value, dict) or value.get("status") != PodStatus.up.value:
            continue
        door = value.get("direct")
        if isinstance(door, dict) and {"host", "port", "key"} <= door.keys():
            doors.append(Door(str(door["host"]), int(door["port"]), str(door["key"])))
    if parallelism == 1 and len(doors) > 1:
        return []
    return doors


@dataclass
class DirectCall:
    """One call offered to a pod."""

    accepted: asyncio.Future[UUID | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    finished: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def lost(self, why: str) -> None:
        if not self.accepted.done():
            self.accepted.set_result(None)
        if not self.finished.done():
            self.finished.set_exception(PodLost(why))
            self.finished.exception()  # retrieved: nobody may be waiting any more

    def on_message(self, message: dict[str, Any]) -> None:
        if "refused" in message:
            logger.debug("A pod refused a direct call: %s", message["refused"])
            self.lost(str(message["refused"]))
        elif "accepted" in message and not self.accepted.done():
            self.accepted.set_result(UUID(message["accepted"]))
        elif "finished" in message and not self.finished.done():
            self.finished.set_result(message)


class PodLink:
    """One open connection to a pod, carrying many calls at once (re-opened when it ends; the
    calls of a connection that ended are lost with it, never those of the next one)."""

    def __init__(self, door: Door) -> None:
        self.door = door
        self._writer: asyncio.StreamWriter | None = None
        self._calls: dict[int, DirectCall] = {}  # of the current connection
        self._reader_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._connecting = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._writer is None or self._writer.is_closing()

    async def _connect(self) -> tuple[asyncio.StreamWriter, dict[int, DirectCall]]:
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer, self._calls
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.door.host, self.door.port, limit=LINE_LIMIT_BYTES),
                CONNECT_TIMEOUT_S,
            )
            self._writer, self._calls = writer, {}
            self._reader_task = asyncio.create_task(self._read(reader, writer, self._calls))
            return writer, self._calls

    async def _read(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        calls: dict[int, DirectCall],
    ) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                call = calls.get(message.get("id"))
                if call is None:
                    continue
                call.on_message(message)
                if "finished" in message or "refused" in message:
                    calls.pop(message["id"], None)
        except (ConnectionError, ValueError) as exc:
            logger.debug("The connection to a pod ended: %s", exc)
        finally:
            writer.close()
            for call in list(calls.values()):
                call.lost("the connection to the pod ended")
            calls.clear()

    async def offer(
        self,
        parameters: dict[str, Any],
        tags: list[str],
        idempotency_key: str | None = None,
        deployment_updated: str | None = None,
    ) -> DirectCall:
        """Send a call; its futures resolve as the pod answers (see the module)."""
        call = DirectCall()
        try:
            writer, calls = await self._connect()
        except (OSError, asyncio.TimeoutError) as exc:
            call.lost(f"the pod cannot be reached: {exc}")
            return call
        number = next(self._ids)
        calls[number] = call
        message = {
            "id": number,
            "key": self.door.key,
            "parameters": parameters,
            "tags": tags,
            "idempotency_key": idempotency_key,
            "deployment_updated": deployment_updated,
        }
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            calls.pop(number, None)
            call.lost(f"the pod cannot be reached: {exc}")
        return call

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            await cancel_and_wait(self._reader_task)


class PodDoors:
    """The pods the gateway can hand calls to, and its connections to them."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        # per deployment: when its statuses were read (the read's start) and what they were
        self._statuses: dict[UUID, tuple[float, list[Any]]] = {}
        # calls whose copy is too old share one read at a time (before, a burst of calls at
        # the end of DOORS_TTL_S read the statuses once each: 23-26 reads in 3 s, issue 14)
        self._reads: FreshReads[UUID, list[Any]] = FreshReads(self._read_statuses)
        self._forgotten: Counter[UUID] = Counter()
        self._links: dict[Door, PodLink] = {}
        self._turn = itertools.count()

    async def doors(self, deployment_id: UUID, parallelism: int) -> list[Door]:
        """The doors of the deployment's pods a call may go to (`doors_of`), from its statuses
        as read at most `DOORS_TTL_S` ago; none when they cannot be read."""
        kept = self._statuses.get(deployment_id)
        if kept is not None and time.monotonic() - kept[0] < DOORS_TTL_S:
            return doors_of(kept[1], parallelism)
        try:
            statuses = await self._reads.get(deployment_id)
        except Exception as exc:  # the worker's path does not need them
            logger.debug("Could not read the pods of deployment %s: %s", deployment_id, exc)
            return []
        return doors_of(statuses, parallelism)

    async def _read_statuses(self, deployment_id: UUID) -> list[Any]:
        began, forgotten = time.monotonic(), self._forgotten[deployment_id]
        statuses = [v.value for v in await read_status_variables(self.client, deployment_id)]
        if self._forgotten[deployment_id] == forgotten:  # not one `forget` has made stale
            self._statuses[deployment_id] = (began, statuses)
        return statuses

    def forget(self, deployment_id: UUID) -> None:
        """Re-read the deployment's pods at the next call (one could not be reached)."""
        self._statuses.pop(deployment_id, None)
        self._forgotten[deployment_id] += 1

    async def offer(
        self,
        deployment_id: UUID,
        parallelism: int,
        parameters: dict[str, Any],
        tags: list[str],
        idempotency_key: str | None = None,
        deployment_updated: str | None = None,
    ) -> DirectCall | None:
        """Offer the call to the deployment's pods in turn; the call one of them accepted, or
        None (none can take it now: the call takes the worker's path). A pod that cannot be
        reached (re-created since, on another port) has the pods read again, once."""
        tried: set[Door] = set()
        for _ in range(2):
            doors = [d for d in await self.doors(deployment_id, parallelism) if d not in tried]
            unreachable = False
            start = next(self._turn)
            for i in range(len(doors)):
                door = doors[(start + i) % len(doors)]
                tried.add(door)
                link = self._links.get(door)
                if link is None:
                    link = self._links[door] = PodLink(door)
                call = await link.offer(parameters, tags, idempotency_key, deployment_updated)
                if await call.accepted is not None:
                    return call
                if link.closed:  # gone: a stale status, a pod re-created
                    self._links.pop(door, None)
                    unreachable = True
            if not unreachable:
                return None
            self.forget(deployment_id)
        return None

    async def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            await link.close()
