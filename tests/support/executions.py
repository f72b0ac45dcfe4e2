"""Deployments and executions through the SDK, the way several test modules need them.

For: unique names, deploying one of the tests' pipelines, waiting until a low-latency
deployment is up, a burst of runs due at one moment, a run's log lines, the reasons runs waited.
Not for: starting processes (tests/support/processes.py) or asserting anything a test checks.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Scheduled
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from tests.support.eventually import EventuallyTimeout, eventually
from tests.support.paths import PIPELINES


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def pool_per_test(prefix: str) -> tuple[Any, Any]:
    """The fixtures `pool` and `sdk` of a module whose tests each own their pool (and start
    their own workers), in place of the session's per-module pool:
    `pool, sdk = pool_per_test("faults")`."""

    @pytest.fixture(name="pool")
    def own_pool(prefect_api: str) -> str:
        return unique(prefix)

    @pytest.fixture(name="sdk")
    def own_sdk(pool: str) -> PipeDeploy:
        return PipeDeploy(work_pool_name=pool)

    return own_pool, own_sdk


def deploy(sdk: PipeDeploy, function: str, **settings: Any) -> str:
    """Deploy `function` of the tests' pipelines under a unique name; the name."""
    name = unique(function.replace("_", "-"))
    sdk.create_deployment(f"{PIPELINES}:{function}", name, **settings)
    return name


def wait_until_up(sdk: PipeDeploy, name: str, timeout_s: float = 45) -> dict:
    """The deployment once its status is "up" (its pods are ready)."""
    return eventually(
        lambda: sdk.get_deployment(name),
        timeout_s,
        until=lambda deployment: deployment["status"] == "up",
        what=f"deployment {name!r} up",
    )


def run_many(
    sdk: PipeDeploy, name: str, inputs: list[dict], delay_s: float = 6, spacing_s: float = 0
) -> list[dict]:
    """Create the executions, all due `delay_s` from now (each `spacing_s` after the one
    before: their FIFO order), then wait for all of them.

    A SQLite server serialises creates (a busy database answers 503 and the client retries
    seconds later), so runs requested back to back would not be waiting at the same time.
    """

    deployment_id = uuid.UUID(sdk.get_deployment(name)["id"])

    async def create() -> list[str]:
        due = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=delay_s)
        async with get_client() as client:
            runs = [
                await client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters=parameters,
                    state=Scheduled(scheduled_time=due + datetime.timedelta(seconds=i * spacing_s)),
                )
                for i, parameters in enumerate(inputs)
            ]
        return [str(run.id) for run in runs]

    ids = run_coro_as_sync(create())
    for execution_id in ids:
        run_coro_as_sync(sdk.await_execution(execution_id, 120))
    return [sdk.get_pipeline_execution(execution_id) for execution_id in ids]


def eventual_log_messages(sdk: PipeDeploy, execution_id: str, timeout_s: float = 15) -> list[str]:
    """A run's log lines; they reach the server in batches, shortly after its final state.

    Returns the lines once the engine's "Finished in state" line is among them, or those there
    are after `timeout_s` (the caller asserts on the lines it needs)."""
    try:
        return eventually(
            lambda: [line["message"] for line in sdk.get_pipeline_execution_logs(execution_id)],
            timeout_s,
            until=lambda messages: any("Finished in state" in m for m in messages),
        )
    except EventuallyTimeout as timeout:
        return list(timeout.last)


def awaiting_ram_messages(executions: list[dict]) -> list[str]:
    """The messages of every AwaitingRAM state the executions went through."""

    async def read() -> list[str]:
        async with get_client() as client:
            return [
                state.message or ""
                for execution in executions
                for state in await client.read_flow_run_states(execution["execution_id"])
                if state.name == "AwaitingRAM"
            ]

    return run_coro_as_sync(read())
