"""Creating an execution on a busy server: a 503 is retried within milliseconds, never doubled.

A proxy in front of the real server answers chosen creates with 503 (what a SQLite server says
when the database is locked); the client's own retries are off, so only `create_run`'s quick
retries can get the run created.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync

from benchmarks.apiproxy import CountingProxy
from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.prefect_api.busy import QUICK_RETRY_DELAYS_S
from prefect_pipedeploy.prefect_api.runs import create_run
from prefect_pipedeploy.stack import free_port
from tests.support.executions import unique
from tests.support.paths import PIPELINES

CREATE = "/deployments/{id}/create_flow_run"


class Refusals:
    """Answer the next `count` calls to `call` (method, endpoint: creates by default) with 503."""

    def __init__(self) -> None:
        self.count = 0
        self.call = ("POST", CREATE)

    def __call__(self, method: str, endpoint: str) -> int | None:
        if (method, endpoint) == self.call and self.count > 0:
            self.count -= 1
            return 503
        return None


@pytest.fixture(scope="module")
def proxy(prefect_api: str) -> Iterator[tuple[CountingProxy, Refusals]]:
    refusals = Refusals()
    proxy = CountingProxy(prefect_api.removesuffix("/api"), port=free_port(), refuse=refusals)
    proxy.start()
    yield proxy, refusals
    proxy.stop()


@pytest.fixture
def refusals(proxy: tuple[CountingProxy, Refusals]) -> Iterator[Refusals]:
    """The proxy's refusals, put back to creates and none after the test."""
    yield proxy[1]
    proxy[1].count, proxy[1].call = 0, ("POST", CREATE)


@pytest.fixture(scope="module")
def deployment_id(prefect_api: str) -> uuid.UUID:
    sdk = PipeDeploy(work_pool_name=unique("idle"))  # no worker: runs stay Scheduled
    created = sdk.create_deployment(f"{PIPELINES}:score", unique("busy"))
    return uuid.UUID(created["id"])


def create_through(proxy: CountingProxy, deployment_id: uuid.UUID) -> uuid.UUID:
    async def create() -> uuid.UUID:
        async with PrefectClient(proxy.url("test")) as client:
            return (await create_run(client, deployment_id, parameters={"text": "x"})).id

    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        return run_coro_as_sync(create())


def creates(proxy: CountingProxy) -> list[int]:
    return [c.status for c in proxy.snapshot() if c.endpoint == CREATE]


def runs_of(deployment_id: uuid.UUID) -> int:
    async def count() -> int:
        async with get_client() as client:
            return await client.count_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )

    return run_coro_as_sync(count())


@pytest.mark.parametrize(
    ("refused", "expected"),
    [
        (0, [201]),
        (1, [503, 201]),
        (3, [503, 503, 503, 201]),
    ],
)
def test_refused_creates_are_retried_quickly_and_create_one_run(
    proxy: tuple[CountingProxy, Refusals],
    deployment_id: uuid.UUID,
    refused: int,
    expected: list[int],
) -> None:
    counting, refusals = proxy
    before, runs_before = len(creates(counting)), runs_of(deployment_id)
    refusals.count = refused
    create_through(counting, deployment_id)
    statuses = creates(counting)[before:]
    # the refused tries, then the create; the real server may refuse once more itself (its
    # SQLite database busy: CI, with another test session on the machine), which is retried too
    assert statuses[: len(expected) - 1] == expected[:-1] and statuses[-1] == 201, statuses
    assert set(statuses[:-1]) <= {503}, statuses
    assert runs_of(deployment_id) == runs_before + 1


def test_a_server_busy_for_longer_gets_the_error(
    proxy: tuple[CountingProxy, Refusals], deployment_id: uuid.UUID
) -> None:
    counting, refusals = proxy
    before, runs_before = len(creates(counting)), runs_of(deployment_id)
    tries = len(QUICK_RETRY_DELAYS_S) + 1  # the quick tries, then the client's (retries off here)
    refusals.count = tries
    with pytest.raises(PrefectHTTPStatusError, match="503"):
        create_through(counting, deployment_id)
    assert creates(counting)[before:] == [503] * tries
    assert runs_of(deployment_id) == runs_before


def test_other_errors_are_not_retried(proxy: tuple[CountingProxy, Refusals]) -> None:
    counting, _ = proxy
    before = len(creates(counting))
    with pytest.raises(ObjectNotFound):
        create_through(counting, uuid.uuid4())
    assert creates(counting)[before:] == [404]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_quick_tries_do_not_wait_for_the_clients_pause(
    proxy: tuple[CountingProxy, Refusals], deployment_id: uuid.UUID
) -> None:
    """Before: every quick try answered 503 still slept about 2 s in Prefect's client (it
    sleeps before it looks at its retry count, even with its retries off), so three 503s cost
    6 s, not 0.2 s. Now the 503 is raised to `create_run` before that pause: Prefect's client
    never says it will try again."""
    counting, refusals = proxy
    records = _Records()
    client_logger = logging.getLogger("prefect.client")
    level = client_logger.level
    client_logger.addHandler(records)
    client_logger.setLevel(logging.DEBUG)
    try:
        refusals.count = 3
        create_through(counting, deployment_id)
    finally:
        client_logger.removeHandler(records)
        client_logger.setLevel(level)
    assert not [m for m in records.messages if "Another attempt will be made" in m], (
        records.messages
    )


def test_a_refused_pause_of_a_deployment_is_retried(
    proxy: tuple[CountingProxy, Refusals], refusals: Refusals
) -> None:
    """CI: pausing a deployment with a 2 s schedule (its update deletes the scheduled runs) met
    another commit on each of the six tries Prefect's client makes, and `update_deployment`
    raised the 503. The SDK's writes to deployments retry a 503 quickly, as creates do."""
    counting, _ = proxy
    sdk = PipeDeploy(api_url=counting.url("test"), work_pool_name=unique("idle"))
    name = unique("paused")
    sdk.create_deployment(f"{PIPELINES}:score", name)
    refusals.call, refusals.count = ("PATCH", "/deployments/{id}"), 4
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        updated = sdk.update_deployment(name, disabled=True)
    assert updated["status"] == "disabled"
    patches = [c.status for c in counting.snapshot() if c.method == "PATCH"]
    assert patches[-5:] == [503, 503, 503, 503, 204], patches
    sdk.delete_deployment(name)
