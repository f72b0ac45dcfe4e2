"""The stack's Prefect server entry (`serverproc`): where its health check is, the second
`gc.freeze()` once it answers, and its timestamps bound on PostgreSQL as stdlib datetimes in UTC
(`_compat_server.postgres_timestamps_plain`; stored through a real server: test_on_postgresql.py). That the stack's server runs through it: every test's server
(`stack.start_prefect_server`)."""

from __future__ import annotations

import gc
import http.server
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pendulum
import pytest
from prefect.server.utilities.database import Timestamp
from prefect.types._datetime import DateTime
from prefect.types._datetime import now as prefect_now
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as sqlite_dialect

from prefect_pipedeploy._compat_server import postgres_timestamps_plain
from prefect_pipedeploy.serverproc import freeze_once_serving, health_url
from prefect_pipedeploy.stack import free_port


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (["x", "server", "start"], "http://127.0.0.1:4200/api/health"),  # Prefect's defaults
        (["x", "server", "start", "--port", "5123"], "http://127.0.0.1:5123/api/health"),
        (
            ["x", "server", "start", "--host", "0.0.0.0", "--port", "81"],
            "http://127.0.0.1:81/api/health",
        ),
        (
            ["x", "server", "start", "--host", "10.1.2.3", "--port", "81"],
            "http://10.1.2.3:81/api/health",
        ),
        (["x", "server", "start", "--port"], "http://127.0.0.1:4200/api/health"),  # no value
    ],
)
def test_health_url(argv: list[str], url: str) -> None:
    assert health_url(argv) == url


@pytest.fixture
def answering() -> Iterator[str]:
    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/api/health"
    finally:
        server.shutdown()
        server.server_close()


def test_freezes_once_the_server_answers(answering: str) -> None:
    gc.unfreeze()
    try:
        assert freeze_once_serving(answering, wait_s=10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_does_not_freeze_when_nothing_answers() -> None:
    gc.unfreeze()
    assert not freeze_once_serving(f"http://127.0.0.1:{free_port()}/api/health", wait_s=1)
    assert gc.get_freeze_count() == 0


PARIS = pendulum.timezone("Europe/Paris")


@pytest.mark.parametrize(
    ("given", "instant"),
    [
        # Prefect's own timestamps (Pendulum, 3.9.1 on Python 3.11), in UTC and at an offset
        (prefect_now("UTC"), None),
        (
            DateTime(2030, 1, 2, 3, 4, 5, 6, tzinfo=PARIS),
            datetime(2030, 1, 2, 2, 4, 5, 6, tzinfo=timezone.utc),
        ),
        (
            DateTime(2030, 7, 2, 0, 30, tzinfo=PARIS),  # summer time, the day before in UTC
            datetime(2030, 7, 1, 22, 30, tzinfo=timezone.utc),
        ),
        # stdlib datetimes, at an offset and in UTC
        (
            datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2030, 1, 2, 8, 4, 5, tzinfo=timezone.utc),
        ),
        (datetime(2030, 1, 2, tzinfo=timezone.utc), datetime(2030, 1, 2, tzinfo=timezone.utc)),
    ],
)
def test_postgresql_timestamps_bind_as_stdlib_datetimes_in_utc(
    given: datetime, instant: datetime | None, plain_timestamps: None
) -> None:
    bound = Timestamp().process_bind_param(given, asyncpg_dialect())
    assert type(bound) is datetime
    assert bound == given == (instant or given)
    assert bound.utcoffset() == timedelta(0) or bound is given
    assert bound.microsecond == given.microsecond


def test_sqlite_timestamps_and_none_bind_as_prefect_binds_them(plain_timestamps: None) -> None:
    given = DateTime(2030, 1, 2, 3, 4, 5, 6, tzinfo=PARIS)
    bound = Timestamp().process_bind_param(given, sqlite_dialect())
    assert bound == given and bound.tzinfo == ZoneInfo("UTC")  # Prefect's own conversion
    assert Timestamp().process_bind_param(None, asyncpg_dialect()) is None
    with pytest.raises(ValueError, match="must have a timezone"):
        Timestamp().process_bind_param(datetime(2030, 1, 2), asyncpg_dialect())


@pytest.fixture
def plain_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    """`postgres_timestamps_plain` installed in this process, undone after the test."""
    monkeypatch.setattr(Timestamp, "process_bind_param", Timestamp.process_bind_param)
    postgres_timestamps_plain()
