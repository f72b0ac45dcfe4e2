"""A pod's door for the gateway: endpoint calls handed straight to the pod (direct dispatch).

For: `DirectDoor`, a listener on 127.0.0.1 (a free port) that a pod opens when it is ready; its
worker publishes the address and a key with the pod's status (`prefect_api.published`), and the
gateway (`gateway.direct`) keeps a connection open to it. For each call it takes a free slot of
the pod (`Pod.take_slot_now`: none free, or runs of the deployment waiting for the pod, and the
call is refused: the gateway takes the worker's path), creates the execution in Prefect already
Running (`prefect_api.runs.create_execution`, through Prefect's plain create route when the
gateway read the deployment as the pod has it, `same_version`, with the flow version and retry
policy its engine would PATCH, `_compat.engine_fields`; its engine does not propose Running nor
send that PATCH), tells
the worker about it as about a run it handed over (so a pod that dies under it ends it
Crashed; the worker hears the create's idempotency key first, so a pod that dies between its
create and that word leaves a run the worker finds by the key), runs it like any other run of
the pod, and answers once its final state and its logs
are stored, with the outputs. Not for: deciding who may call (the gateway checks tokens), runs
made any other way (the worker's path).

Protocol: JSON lines both ways on one connection, calls answered out of order by their `id`.
The gateway sends {"id": N, "key": KEY, "parameters": {...}, "tags": [...], "idempotency_key":
K, "deployment_updated": ISO}; the pod answers
{"id": N, "refused": why} or {"id": N, "accepted": RUN_ID} and later {"id": N, "finished":
RUN_ID, "state": TYPE, "message": ..., "outputs": {...}, "stored": {...}}. A wrong key closes the
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import json
import secrets
import uuid
from typing import TYPE_CHECKING, Any

from prefect.logging import get_logger
from prefect.states import Running

from prefect_pipedeploy._compat import created_running, engine_fields
from prefect_pipedeploy.prefect_api.runs import create_execution

if TYPE_CHECKING:
    from prefect_pipedeploy.engine.pod import Pod

logger = get_logger("prefect_pipedeploy.engine.direct")

#: The longest line either side reads: a call's inputs (up to the server's 512 KiB of
#: parameters, more once JSON-escaped) and a run's outputs fit (asyncio's default is 64 KiB).
LINE_LIMIT_BYTES = 64 * 1024 * 1024

#: The Running state's message on a run a pod took straight from the gateway.
DIRECT_MESSAGE = "Started by its low-latency pod, called through the gateway"


class DirectDoor:
    """The pod's listener for direct calls."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.key = secrets.token_urlsafe(24)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._calls: set[asyncio.Task[None]] = set()

    async def open(self) -> dict[str, Any]:
        """Start listening; the address the worker publishes (host, port, key)."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, limit=LINE_LIMIT_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return {"host": "127.0.0.1", "port": self.port, "key": self.key}

    async def close(self) -> None:
        """Take no more calls; calls already accepted run on (the pod drains them)."""
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                call = json.loads(line)
                if not hmac.compare_digest(str(call.get("key", "")), self.key):
                    logger.warning("A direct call with a wrong key; connection closed")
                    return
                task = asyncio.create_task(self._call(call, writer))
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
        except (ConnectionError, ValueError):
            return  # the gateway went away, or sent garbage: the calls accepted run on
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _call(self, call: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        def answer(message: dict[str, Any]) -> None:
            if not writer.is_closing():
                line = json.dumps({"id": call.get("id"), **message}, default=str)
                writer.write(line.encode() + b"\n")

        pod = self.pod
        if not pod.take_slot_now():
            answer({"refused": pod.direct_refusal() or "the pod is busy"})
            return
        # the worker hears of the run by its key before it exists: a pod that dies between its
        # create and its "started" leaves a run its worker finds by the key and ends
        key = str(call.get("idempotency_key") or f"pipedeploy-direct-{uuid.uuid4()}")
        pod.send({"event": "creating", "idempotency_key": key})
        try:
            flow_run = await create_execution(
                pod.client,
                pod.deployment.id,
                pod.spec,
                call.get("parameters") or {},
                list(call.get("tags") or []),
                state=Running(message=DIRECT_MESSAGE),
                idempotency_key=key,
                deployment=pod.deployment if same_version(pod, call) else None,
                engine_fields=engine_fields(pod.runner.flow),
            )
        except Exception as exc:  # the gateway's own create shows the caller why
            pod.send({"event": "not_created", "idempotency_key": key})
            pod.release_slot()
            logger.info("A direct call was not created (%s: %s)", type(exc).__name__, exc)
            answer({"refused": f"the execution could not be created: {type(exc).__name__}"})
            return
        except BaseException:
            pod.release_slot()
            raise
        created_running(flow_run.id)
        task = pod.start_direct_run(flow_run)
        answer({"accepted": str(flow_run.id)})
        outcome = await task
        answer(
            {
                "finished": str(flow_run.id),
                "state": outcome["state"],
                "message": outcome["message"],
                "outputs": outcome["outputs"],
                "stored": outcome["stored"],
            }
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def same_version(pod: Pod, call: dict[str, Any]) -> bool:
    """Whether the gateway read the deployment of a call as the pod has it (the same `updated`
    time): then the pod's copy makes the run (`runs.plain_create`); otherwise one of them has
    not seen a change yet (the worker hands the pod a changed deployment within a round) and the
    server's create-from-deployment route makes it from the deployment as stored."""
    stamp, mine = call.get("deployment_updated"), pod.deployment.updated
    if not isinstance(stamp, str) or mine is None:
        return False
    try:
        return datetime.datetime.fromisoformat(stamp) == mine
    except ValueError:
        return False
