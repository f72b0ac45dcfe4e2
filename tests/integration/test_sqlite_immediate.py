"""A SQLite server's flow-run creates begun IMMEDIATE (`_compat_server.sqlite_creates_immediate`,
installed by `serverproc` in the server the stack starts): concurrent creates wait for the writes
before them instead of failing (503 at the server).

First the mechanism, on a real SQLite database through Prefect's own database configuration:
a transaction that read, then writes after another connection committed, fails at once when
begun DEFERRED (Prefect's default, kept for every request but the creates) and waits its turn
when begun IMMEDIATE (a create's). Which requests are creates: a table. Then the real server the
tests share (started through `serverproc`): a burst of creates, logs and final states from many
tasks, recorded below Prefect's client, meets no 503 (without the change, its creates did).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.server.api import server
from prefect.server.database.configurations import AioSqliteConfiguration
from prefect.states import Completed, Running

from prefect_pipedeploy import PipeDeploy, _compat_server
from prefect_pipedeploy._compat import wrap_transports
from prefect_pipedeploy._compat_server import begins_immediate, sqlite_creates_immediate
from prefect_pipedeploy.prefect_api.runs import create_deployment_run
from tests.support.paths import PIPELINES

pytestmark = pytest.mark.anyio


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[tuple[AioSqliteConfiguration, Any]]:
    """Prefect's SQLite configuration on a fresh database with one table, and its engine."""
    config = AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    engine = await config.engine()
    async with engine.begin() as connection:
        await connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    try:
        yield config, engine
    finally:
        await engine.dispose()


async def read_then_write_while_another_commits(
    config: AioSqliteConfiguration, engine: Any
) -> tuple[bool, list[int]]:
    """Transaction A reads, B (another connection) writes 2, then A writes 1 and commits. Whether
    B was still waiting when A wrote, and the rows in commit order (A's write raises when it
    cannot take the write lock)."""
    a, b = await config.session(engine), await config.session(engine)

    async def write_b() -> None:
        async with config.begin_transaction(b):
            await b.execute(sa.text("INSERT INTO t VALUES (2)"))

    try:
        async with config.begin_transaction(a):
            await a.execute(sa.text("SELECT count(*) FROM t"))
            other = asyncio.create_task(write_b())
            await asyncio.sleep(0.3)  # B's insert runs (DEFERRED) or waits (IMMEDIATE)
            b_waited = not other.done()
            await a.execute(sa.text("INSERT INTO t VALUES (1)"))
        await other
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.text("SELECT x FROM t ORDER BY rowid"))).all()
        return b_waited, [row.x for row in rows]
    finally:
        await a.close()
        await b.close()


async def test_deferred_as_prefect_has_it_the_later_write_fails(database: Any) -> None:
    config, engine = database
    with pytest.raises(sa.exc.OperationalError, match="database is locked"):
        await read_then_write_while_another_commits(config, engine)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sqlite_creates_immediate` installed in this process, undone after the test."""
    monkeypatch.setattr(
        AioSqliteConfiguration, "begin_transaction", AioSqliteConfiguration.begin_transaction
    )
    monkeypatch.setattr(server, "create_app", server.create_app)
    sqlite_creates_immediate()


async def test_installed_a_request_that_is_no_create_keeps_prefects_mode(
    database: Any, installed: None
) -> None:
    config, engine = database
    with pytest.raises(sa.exc.OperationalError, match="database is locked"):
        await read_then_write_while_another_commits(config, engine)


async def test_installed_a_creates_transaction_begins_immediate_and_the_other_waits(
    database: Any, installed: None
) -> None:
    config, engine = database
    token = _compat_server._begin_immediate.set(True)  # what the app does for a create request
    try:
        b_waited, rows = await read_then_write_while_another_commits(config, engine)
    finally:
        _compat_server._begin_immediate.reset(token)
    assert b_waited
    assert rows == [1, 2]  # A's commit, then B's: both kept


RUN_ID = "5a8dde96-fe67-4eae-b328-4bd0d060a936"  # fixed: xdist's processes collect alike


@pytest.mark.parametrize(
    ("method", "path", "immediate"),
    [
        ("POST", "/api/flow_runs/", True),
        ("POST", "/api/flow_runs", True),
        ("POST", f"/api/deployments/{RUN_ID}/create_flow_run", True),
        ("GET", "/api/flow_runs/", False),
        ("POST", "/api/flow_runs/filter", False),
        ("POST", f"/api/flow_runs/{RUN_ID}/set_state", False),
        ("PATCH", f"/api/flow_runs/{RUN_ID}", False),
        ("POST", "/api/logs/", False),
        ("POST", "/api/deployments/", False),
        ("POST", "/flow_runs/", False),  # the API is under /api
    ],
)
def test_which_requests_begin_immediate(method: str, path: str, immediate: bool) -> None:
    assert begins_immediate(method, path) is immediate


class Recording(httpx.AsyncBaseTransport):
    """Records the status of every write that reaches the server (below Prefect's retries)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, statuses: list[tuple[str, int]]) -> None:
        self.inner, self.statuses = inner, statuses

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" and not request.url.path.endswith("/filter"):
            self.statuses.append((f"{request.method} {request.url.path}", response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_stacks_server_answers_a_burst_of_writes_without_503(sdk: PipeDeploy) -> None:
    """24 tasks at once, each: create a run Running, write a log line, set it Completed (what a
    pod's direct call writes). Each write reaches the server once, answered without 503."""
    created = await sdk.acreate_deployment(f"{PIPELINES}:score", f"imm-{uuid.uuid4().hex[:6]}")
    statuses: list[tuple[str, int]] = []
    async with get_client() as client:
        with get_client(sync_client=True) as sync_client:
            wrap_transports(
                client, sync_client, lambda inner: Recording(inner, statuses), lambda inner: inner
            )
            deployment = await client.read_deployment(uuid.UUID(created["id"]))

            async def create_log_finish() -> uuid.UUID:
                run = await create_deployment_run(
                    client, deployment, parameters={}, tags=["imm"], state=Running()
                )
                line = LogCreate(
                    name="imm", level=20, message="x", timestamp=time.time(), flow_run_id=run.id
                )  # type: ignore[arg-type]
                await client.create_logs([line.model_dump(mode="json")])
                await client.set_flow_run_state(run.id, Completed(), force=True)
                return run.id

            runs = await asyncio.gather(*(create_log_finish() for _ in range(24)))
            for run_id in runs:
                assert (await client.read_flow_run(run_id)).state_type.value == "COMPLETED"
    assert len(statuses) == 3 * 24, statuses
    assert all(status < 300 for _, status in statuses), [s for s in statuses if s[1] >= 300]
