"""The pure rules of the stack's PostgreSQL: its URL, programs, version, who may reach its
directory, and the database a Prefect server is told to use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_pipedeploy.exceptions import DatabaseUnavailable
from prefect_pipedeploy.postgresql import (
    SERVER_POOL,
    client_environment,
    connection_url,
    major_version,
    newest_version_dir,
    programs_dir,
    unreachable_ancestor,
)
from prefect_pipedeploy.stack import Database, server_environment, sqlite_url


@pytest.mark.parametrize(
    ("port", "password", "user", "database", "url"),
    [
        (5432, "secret", "prefect", "prefect", "postgresql+asyncpg://prefect:secret@127.0.0.1:5432/prefect"),
        # a password with URL syntax in it is quoted, not taken for a host or a path
        (6000, "p@ss:w/rd%", "prefect", "prefect", "postgresql+asyncpg://prefect:p%40ss%3Aw%2Frd%25@127.0.0.1:6000/prefect"),
        (7000, "x", "team user", "runs db", "postgresql+asyncpg://team%20user:x@127.0.0.1:7000/runs%20db"),
    ],
)  # fmt: skip
def test_connection_url(port: int, password: str, user: str, database: str, url: str) -> None:
    assert connection_url(port, password, user=user, database=database) == url


@pytest.mark.parametrize(
    ("versions", "newest"),
    [
        (["15"], "15"),
        (["13", "16", "15"], "16"),
        (["9", "10"], "10"),  # by number, not by text
        (["15", "common"], "15"),  # Debian's /usr/lib/postgresql may hold other directories
        ([], None),
    ],
)
def test_newest_installed_version_wins(versions: list[str], newest: str | None) -> None:
    paths = [Path("/usr/lib/postgresql") / v / "bin" / "initdb" for v in versions]
    expected = Path("/usr/lib/postgresql") / newest / "bin" if newest else None
    assert newest_version_dir(paths) == expected


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "15"),
        ("postgres (PostgreSQL) 16.4", "16"),
        ("postgres (PostgreSQL) 10.23", "10"),
    ],
)
def test_major_version(text: str, major: str) -> None:
    assert major_version(text) == major


def test_an_unknown_version_text_says_what_it_read() -> None:
    with pytest.raises(
        DatabaseUnavailable, match="'something else'.*apt-get install -y postgresql"
    ):
        major_version("something else")


def test_missing_programs_say_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no initdb on PATH
    with pytest.raises(DatabaseUnavailable) as error:
        programs_dir(debian=tmp_path / "no-postgresql")
    assert "apt-get install -y postgresql" in str(error.value)
    assert "initdb" in str(error.value)


def test_programs_on_path_are_found_without_debian_s_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "initdb").write_text("")
    (tmp_path / "bin" / "initdb").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert programs_dir(debian=tmp_path / "none") == tmp_path / "bin"


def test_the_programs_environment_drops_inherited_pg_variables() -> None:
    env = client_environment("pw", base={"PGHOST": "elsewhere", "PGSERVICE": "x", "HOME": "/h"})
    assert env == {"HOME": "/h", "PGPASSWORD": "pw", "PGCONNECT_TIMEOUT": "5", "LC_MESSAGES": "C"}


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory under the system's temporary directory (which everyone may enter); pytest's
    own tmp_path sits under a directory only its owner may enter."""
    path = Path(tempfile.mkdtemp(prefix="pipedeploy-reach-"))
    yield path
    shutil.rmtree(path)


STRANGER_UID, STRANGER_GID = 54321, 54321


@pytest.mark.parametrize(
    ("mode", "who", "blocked"),
    [
        (0o755, "stranger", False),
        (0o711, "stranger", False),  # enter, not list: enough
        (0o700, "stranger", True),
        (0o750, "stranger", True),
        (0o710, "group", False),
        (0o700, "group", True),
        (0o700, "owner", False),
    ],
)
def test_who_may_enter_the_cluster_s_directory(
    reachable_dir: Path, mode: int, who: str, blocked: bool
) -> None:
    reachable_dir.chmod(mode)
    status = reachable_dir.stat()
    uid, gid = {
        "stranger": (STRANGER_UID, STRANGER_GID),
        "group": (STRANGER_UID, status.st_gid),
        "owner": (status.st_uid, STRANGER_GID),
    }[who]
    target = reachable_dir / "stack" / "postgres"  # not made yet: this process makes it
    assert unreachable_ancestor(target, uid, gid) == (reachable_dir if blocked else None)


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        (None, "sqlite"),
        ("postgresql+asyncpg://prefect:pw@127.0.0.1:5999/prefect", "postgresql"),
    ],
)
def test_the_server_is_told_its_database(
    tmp_path: Path, database_url: str | None, expected: str
) -> None:
    base = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "left over from the caller"}
    env = server_environment(tmp_path, base=base, database_url=database_url)
    url = env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert url == (database_url or sqlite_url(tmp_path))
    assert url.startswith(f"{expected}+")


@pytest.mark.parametrize(
    ("text", "database"), [("sqlite", Database.sqlite), ("postgresql", Database.postgresql)]
)
def test_database_names(text: str, database: Database) -> None:
    assert Database(text) is database and str(database) == text


POOL_SIZE = "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE"
MAX_OVERFLOW = "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW"


@pytest.mark.parametrize(
    ("database_url", "base", "expected"),
    [
        (None, {}, {POOL_SIZE: None, MAX_OVERFLOW: None}),  # SQLite: Prefect's
        ("postgresql+asyncpg://p:pw@127.0.0.1:5999/p", {}, SERVER_POOL),
        (
            "postgresql+asyncpg://p:pw@127.0.0.1:5999/p",
            {POOL_SIZE: "7"},  # the user's value wins
            {POOL_SIZE: "7", MAX_OVERFLOW: SERVER_POOL[MAX_OVERFLOW]},
        ),
        (
            "postgresql+asyncpg://p:pw@127.0.0.1:5999/p",
            {"PREFECT_SQLALCHEMY_MAX_OVERFLOW": "3"},  # under the older name Prefect reads too
            {POOL_SIZE: SERVER_POOL[POOL_SIZE], MAX_OVERFLOW: None},
        ),
    ],
)
def test_the_server_pools_its_postgresql_connections(
    tmp_path: Path, database_url: str | None, base: dict[str, str], expected: dict[str, Any]
) -> None:
    env = server_environment(tmp_path, base=base, database_url=database_url)
    assert {name: env.get(name) for name in expected} == expected
