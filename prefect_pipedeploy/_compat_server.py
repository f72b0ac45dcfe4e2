"""Prefect's private API in the Prefect server the stack starts (`serverproc`): the changes that
server installs in its own process before it serves.

For: `sqlite_creates_immediate` (a SQLite server's flow-run creates begun IMMEDIATE) and
`postgres_timestamps_plain` (a PostgreSQL server's timestamps bound as stdlib datetimes). Not
for: anything a client process does (`_compat`, the home of the rest of Prefect's private API
this project uses; this half is apart because it runs in another process, the server's, and
`_compat` had grown past the size the architecture aims at). Each section says the Prefect
version it was checked against (`_compat.CHECKED_AGAINST`); `tests/unit/test_compat.py` pins the
shapes relied on here too.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

# ---------------------------------------------------------------------------------------------
# A SQLite server's flow-run creates begin IMMEDIATE (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# Prefect's SQLite configuration begins a write transaction DEFERRED unless it is asked for
# update (`AioSqliteConfiguration.begin_transaction`, `SQLITE_BEGIN_MODE`). A deferred transaction
# that has read and then writes after another connection committed cannot take the write lock
# (SQLITE_BUSY_SNAPSHOT): SQLite fails it at once, without waiting `busy_timeout`, and the server
# answers 503. Under concurrent writes most flow-run creates met that, and measured, only they
# (every 503 a server answered, by route). Begun IMMEDIATE, a create takes the write lock at
# BEGIN, waiting for the writer before it as `busy_timeout` allows: creates queue instead of
# failing. Other requests keep Prefect's modes: begun IMMEDIATE too, a round trip at rest took
# a few percent longer (medians 204 -> 212 ms and 214 -> 225 ms, benchmarks/README.md).
# Installed by the server the stack starts (`serverproc`), in its process: the app `create_app`
# builds is wrapped so that the requests `IMMEDIATE_REQUESTS` matches run with
# `_begin_immediate` set.

#: The requests whose write transactions begin IMMEDIATE: the two flow-run creates.
IMMEDIATE_REQUESTS = re.compile(r"^/api/(flow_runs/?|deployments/[^/]+/create_flow_run)$")

_begin_immediate: ContextVar[bool] = ContextVar("pipedeploy_begin_immediate", default=False)


def begins_immediate(method: str, path: str) -> bool:
    """Whether a request's write transactions begin IMMEDIATE (`IMMEDIATE_REQUESTS`)."""
    return method == "POST" and IMMEDIATE_REQUESTS.match(path) is not None


def sqlite_creates_immediate() -> None:
    """In this process (a Prefect server about to start): the write transactions of a flow-run
    create begin IMMEDIATE on SQLite (`begins_immediate`); the others as Prefect begins them."""
    from prefect.server.api import server
    from prefect.server.database import configurations

    @asynccontextmanager
    async def begin_transaction(
        self: Any, session: Any, with_for_update: bool = False
    ) -> AsyncIterator[Any]:
        immediate = with_for_update or _begin_immediate.get()
        token = configurations.SQLITE_BEGIN_MODE.set("IMMEDIATE" if immediate else "DEFERRED")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            configurations.SQLITE_BEGIN_MODE.reset(token)

    configurations.AioSqliteConfiguration.begin_transaction = begin_transaction  # type: ignore[method-assign]
    create_app = server.create_app

    def create_app_marking_creates(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)

        async def marked(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http" or not begins_immediate(scope["method"], scope["path"]):
                return await app(scope, receive, send)
            token = _begin_immediate.set(True)
            try:
                return await app(scope, receive, send)
            finally:
                _begin_immediate.reset(token)

        return marked

    server.create_app = create_app_marking_creates  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# A PostgreSQL server's timestamps bound as plain datetimes (checked against 3.9.1)
# ---------------------------------------------------------------------------------------------
#
# On Python 3.11 and 3.12, Prefect's server makes its timestamps as `prefect.types._datetime.
# DateTime`, a Pendulum subclass, and its `Timestamp` column type hands them to asyncpg as they
# are on PostgreSQL. asyncpg encodes a timestamp by subtracting its epoch from it, and
# Pendulum's `__sub__` builds an `Interval`: about 65 us each on this project's 2-core machine,
# against 2 us for the conversion below, a few dozen times per flow-run create (its row, its
# state, its event and the event's resources). Measured (benchmarks/README.md): 32 concurrent
# plain creates cost the server 30.1 ms each with them, 23.7 ms with this. Installed by the
# server the stack starts (`serverproc`), in its process: bound values are the same instants
# as stdlib datetimes in UTC; what is stored and read back does not change.


def _plain_utc(value: Any) -> Any:
    """`value` (an aware datetime, maybe a Pendulum one) as a stdlib datetime in UTC."""
    if type(value) is datetime.datetime:
        return value
    offset = value.utcoffset()
    plain = datetime.datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        datetime.timezone.utc,
    )
    return plain - offset if offset else plain


def postgres_timestamps_plain() -> None:
    """In this process (a Prefect server about to start): on PostgreSQL, Prefect's `Timestamp`
    columns bind stdlib datetimes in UTC (`_plain_utc`); SQLite's binding is left as it is."""
    from prefect.server.utilities.database import Timestamp

    bind = Timestamp.process_bind_param

    def process_bind_param(self: Any, value: Any, dialect: Any) -> Any:
        bound = bind(self, value, dialect)
        if bound is None or dialect.name != "postgresql":
            return bound
        return _plain_utc(bound)

    Timestamp.process_bind_param = process_bind_param  # type: ignore[method-assign]
