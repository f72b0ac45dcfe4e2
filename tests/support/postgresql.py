"""What a PostgreSQL database holds, read there with asyncpg (Prefect's own driver), not
through Prefect.

For: the tests on PostgreSQL checking that a cluster serves the URL a Prefect server is given,
and that an execution is a row of the database the server was started on; a directory the
`postgres` user may enter, for a cluster a test keeps there.
Not for: starting a cluster (prefect_pipedeploy.postgresql does, through the stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg


@contextlib.contextmanager
def open_directory(prefix: str) -> Iterator[Path]:
    """A new directory the `postgres` user may enter (run as root, PostgreSQL runs as that
    user, and pytest's tmp_path sits under a directory only root may enter), removed with all
    it holds when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fetch_value(database_url: str, sql: str, *args: Any, first: str = "") -> Any:
    """The first value `sql` (with `args`) returns, after running the statements `first`, at
    `database_url` (a Prefect server's `postgresql+asyncpg://...`)."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run() -> Any:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            if first:
                await connection.execute(first)
            return await connection.fetchval(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def flow_runs_in(database_url: str, run_id: str) -> int:
    """How many flow runs with this id the database at `database_url` holds (1 or 0)."""
    return int(
        fetch_value(database_url, "SELECT count(*) FROM flow_run WHERE id = $1::uuid", run_id)
    )


def connections_of(database_url: str) -> set[int]:
    """The backend pids of the connections open to the database at `database_url` now, other
    than this read's own (PostgreSQL's `pg_stat_activity`)."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run() -> set[int]:
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return {row["pid"] for row in rows}
        finally:
            await connection.close()

    return asyncio.run(run())
