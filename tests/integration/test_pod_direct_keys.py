"""A pod's door for direct calls (`engine.direct`) tells its worker each create's idempotency key
before the create: a real pod (`engine.pod.Pod`, in this process, with its clients and
suspension observer as `engine.pod.serve` sets them up) against the session's server, called
over real TCP; what the worker would read comes out of the far end of a socket pair.

A call whose run is made: "creating" (the key), then "started" naming the run with the same
key, then "finished". A call whose create fails: "creating", then "not_created". The worker's
side of those messages, and what it does with a dead pod's keys: test_pod_gone_runs.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.context import AsyncClientContext, SyncClientContext

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy._compat import shared_suspension_observer
from prefect_pipedeploy.engine.direct import DirectDoor
from prefect_pipedeploy.engine.loader import load_deployment_pipeline
from prefect_pipedeploy.engine.pod import Pod
from prefect_pipedeploy.examples import demo
from prefect_pipedeploy.spec import spec_from_job_variables
from tests.support.executions import unique

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def pod_with_door(sdk: PipeDeploy) -> AsyncIterator[tuple[dict[str, Any], socket.socket]]:
    """A pod of a new low-latency deployment of `demo.score`, its door open: the door's address
    and the worker's end of the pod's channel."""
    created = await sdk.acreate_deployment(
        f"{demo.__file__}:score", unique("door-keys"), mode="low_latency", max_retries=0
    )
    ours, worker_end = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    try:
        async with AsyncClientContext.get_or_create() as context:
            client: PrefectClient = context.client
            deployment = await client.read_deployment(uuid.UUID(created["id"]))
            flow = await load_deployment_pipeline(deployment)
            with SyncClientContext.get_or_create():
                async with shared_suspension_observer() as suspensions:
                    spec = spec_from_job_variables(deployment.job_variables)
                    pod = Pod(deployment, spec, flow, client, writer, suspensions)
                    await pod.runner.resolve_result_defaults(client)
                    door = DirectDoor(pod)
                    address = await door.open()
                    try:
                        yield address, worker_end
                    finally:
                        await door.close()
                        await pod.drain(10, "the test ended")
    finally:
        writer.close()
        worker_end.close()


async def call(
    address: dict[str, Any], parameters: dict[str, Any], key: str
) -> list[dict[str, Any]]:
    """One call through the door; the pod's answers until it finished or refused it."""
    reader, writer = await asyncio.open_connection(address["host"], address["port"])
    message = {"id": 1, "key": address["key"], "parameters": parameters, "tags": []}
    writer.write(json.dumps({**message, "idempotency_key": key}).encode() + b"\n")
    answers: list[dict[str, Any]] = []
    try:
        while not answers or not ({"finished", "refused"} & set(answers[-1])):
            answers.append(json.loads(await asyncio.wait_for(reader.readline(), 60)))
    finally:
        writer.close()
    return answers


def told_worker(worker_end: socket.socket) -> list[dict[str, Any]]:
    """What the pod has written to its worker so far."""
    worker_end.setblocking(False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := worker_end.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_a_direct_call_is_announced_by_its_key_before_its_run_is_made(
    sdk: PipeDeploy, prefect_api: str
) -> None:
    key = f"pipedeploy-call-{uuid.uuid4()}"
    async with pod_with_door(sdk) as (address, worker_end):
        answers = await call(address, {"text": "a b c"}, key)
        await asyncio.sleep(0.2)  # the pod's "finished" to its worker follows its answer
        told = told_worker(worker_end)
    accepted, finished = answers[0]["accepted"], answers[-1]
    assert finished["finished"] == accepted and finished["state"] == "COMPLETED", answers
    direct = [m for m in told if m.get("idempotency_key") == key or m.get("flow_run_id")]
    assert [m["event"] for m in direct] == ["creating", "started", "finished"], told
    assert direct[1] == {
        "event": "started",
        "flow_run_id": accepted,
        "direct": True,
        "idempotency_key": key,
    }


async def test_a_direct_call_whose_create_fails_withdraws_its_key(
    sdk: PipeDeploy, prefect_api: str
) -> None:
    key = f"pipedeploy-call-{uuid.uuid4()}"
    too_large = {"text": "x" * (600 * 1024)}  # past the server's 512 KiB of parameters
    async with pod_with_door(sdk) as (address, worker_end):
        answers = await call(address, too_large, key)
        told = told_worker(worker_end)
    assert "could not be created" in answers[-1]["refused"], answers
    assert told == [
        {"event": "creating", "idempotency_key": key},
        {"event": "not_created", "idempotency_key": key},
    ]
