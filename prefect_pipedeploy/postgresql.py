"""A PostgreSQL cluster for the local stack's Prefect server, from Debian's `postgresql` package.

For: the database of a Prefect server that has outgrown SQLite on one machine. `pipedeploy up
--database postgresql` keeps its cluster in `<home>/postgres` and reuses it on the next `up`;
tests and benchmarks start a throwaway one (no directory given), removed when it stops. The
cluster listens on 127.0.0.1 only, on the port given (no Unix socket), has one superuser with
a generated password and one database, and runs as the `postgres` OS user when this process is
root (PostgreSQL refuses to run as root). `stack.start_prefect_server_on` starts a Prefect
server on it. Not for: a team's shared PostgreSQL (point the server's
PREFECT_SERVER_DATABASE_CONNECTION_URL at it: README, "A Prefect server on PostgreSQL"), nor
tuning, backups or upgrades.

What Prefect 3.9.1 needs of it (read in its migrations, server/database/_migrations/versions/
postgresql): the `pg_trgm` extension, which its migrations create (a trusted extension since
PostgreSQL 13; Debian's postgresql package ships it), and the asyncpg driver (installed with
Prefect).

    pipedeploy up --database postgresql
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from prefect_pipedeploy.exceptions import DatabaseUnavailable
from prefect_pipedeploy.runtimes.process import (
    ChildProcess,
    as_user,
    kill_process_tree,
    start_child,
)

HOST = "127.0.0.1"
ROLE = "prefect"  # the cluster's superuser, whom the Prefect server connects as
DATABASE = "prefect"
OS_USER = "postgres"  # who runs PostgreSQL when this process is root (Debian's package makes it)
DEBIAN_PROGRAMS = Path("/usr/lib/postgresql")  # <major version>/bin/{initdb,postgres,...}
INSTALL = "install Debian's postgresql package: apt-get install -y postgresql"

#: The Prefect server's connection pool on the stack's cluster (its settings; a value in the
#: environment wins). Prefect's defaults keep 5 connections and open up to 10 more, each closed
#: again as soon as its transaction ends: under load every request past the fifth at once paid
#: a new connection (its authentication, PostgreSQL's new backend process, asyncpg's type
#: introspection, its statements prepared again). Measured (benchmarks/README.md, "PostgreSQL:
#: the server's connection pool, and reads shared by calls"): 16 concurrent
#: create/set-state/read rounds, the server's CPU 10.3-11.3 -> 8.6-9.2 ms per request, 28-30 ->
#: 35-38 rounds/s; the gateway section accepted 15.4 / 18.1 -> 21.2 / 28.0 calls/s. 40
#: connections at most, of the cluster's 100.
SERVER_POOL = {
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "20",
}

#: The older name Prefect still reads for each of SERVER_POOL's settings (3.9.1: it reads the
#: current name first, so a value the user set under the older one would lose to ours).
OLDER_POOL_NAMES = {
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "PREFECT_SQLALCHEMY_POOL_SIZE",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "PREFECT_SQLALCHEMY_MAX_OVERFLOW",
}


def pool_settings(env: Mapping[str, str]) -> dict[str, str]:
    """SERVER_POOL's settings that `env` does not set already, under their current name or the
    older one: what the stack adds to its server's environment on PostgreSQL."""
    return {
        name: value
        for name, value in SERVER_POOL.items()
        if name not in env and OLDER_POOL_NAMES[name] not in env
    }


@dataclass(kw_only=True)
class PostgreSQL(ChildProcess):
    """A running cluster: its `postgres` process (a `ChildProcess`, so `stack.running` stops
    it with the rest) and what a Prefect server needs to use it."""

    url: str = field(repr=False)  # holds the password
    port: int
    data_dir: Path
    version: str
    throwaway: bool

    def describe(self) -> str:
        kept = "throwaway" if self.throwaway else "kept"
        return f"PostgreSQL {self.version} on {HOST}:{self.port} (data in {self.data_dir}, {kept})"

    def stop(self, grace_s: float = 30.0) -> int | None:
        """A fast shutdown (SIGINT to the postmaster, what `pg_ctl stop -m fast` sends: sessions
        end, the data is checkpointed); after `grace_s`, kill its whole process group. A
        throwaway cluster's directory is removed."""
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    self.popen.send_signal(signal.SIGINT)
                try:
                    self.popen.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    kill_process_tree(self.popen.pid, signal.SIGKILL)
                    self.popen.wait(timeout=10)
            # a backend that outlived its postmaster (it should not) goes with its group
            kill_process_tree(self.popen.pid, signal.SIGKILL)
        finally:
            if self.throwaway:
                shutil.rmtree(self.data_dir.parent, ignore_errors=True)
        return self.popen.returncode


def start_postgresql(
    port: int,
    directory: Path | None = None,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
) -> PostgreSQL:
    """Start a cluster listening on 127.0.0.1:`port` whose data lives in `directory`/data
    (made by initdb the first time, reused after), or, with no `directory`, a throwaway one in
    a new temporary directory; returns it once its database accepts connections.

    Its log goes to `log_path` (default: `<directory>/postgresql.log`). Raises
    `DatabaseUnavailable` naming the cause and the fix: programs missing, a directory the
    `postgres` user cannot reach, a cluster of another PostgreSQL version or already running,
    or a start that failed (with the log's last lines)."""
    programs = programs_dir()
    user = server_user()
    throwaway = directory is None
    root = Path(tempfile.mkdtemp(prefix="pipedeploy-postgres-")) if directory is None else directory
    try:
        _prepare(root, user)
        version = major_version(_output([str(programs / "postgres"), "--version"]))
        data = root / "data"
        if not (data / "PG_VERSION").exists():
            _initdb(programs, root, user, throwaway)
        _check_reusable(data, version)
        password = (root / "password").read_text().strip()
        log_path = log_path or root / "postgresql.log"
        child = start_child(
            "postgresql",
            [
                str(programs / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "unix_socket_directories=",  # TCP only: no socket file anywhere
            ],
            log_path,
            env=client_environment(password),
            cwd=root,
            user=user,
        )
        cluster = PostgreSQL(
            name="postgresql",
            popen=child.popen,
            log_path=log_path,
            url=connection_url(port, password),
            port=port,
            data_dir=data,
            version=version,
            throwaway=throwaway,
        )
    except BaseException:
        if throwaway:
            shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        _wait_until_ready(cluster, programs, timeout_s)
        _ensure_database(cluster, programs, password)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def connection_url(
    port: int, password: str, host: str = HOST, user: str = ROLE, database: str = DATABASE
) -> str:
    """The SQLAlchemy URL a Prefect server uses for this database (asyncpg, Prefect's driver)."""
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"postgresql+asyncpg://{credentials}@{host}:{port}/{quote(database, safe='')}"


def client_environment(password: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of PostgreSQL's own programs: this process's without its PG* variables
    (a user's PGDATABASE, PGSSLMODE or PGSERVICE must not reach the stack's cluster), with the
    superuser's password, a connect timeout and messages in English."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("PG")
    }
    env.update({"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5", "LC_MESSAGES": "C"})
    return env


def programs_dir(debian: Path = DEBIAN_PROGRAMS) -> Path:
    """Where PostgreSQL's programs are: Debian's newest `/usr/lib/postgresql/<major>/bin`, else
    the directory of the `initdb` on PATH."""
    newest = newest_version_dir(debian.glob("*/bin/initdb"))
    if newest is not None:
        return newest
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise DatabaseUnavailable(
        f"PostgreSQL's programs (initdb, postgres) are not installed (looked in {debian}/*/bin"
        f" and on PATH); {INSTALL}"
    )


def newest_version_dir(initdbs: Iterable[Path]) -> Path | None:
    """Of `<root>/<major>/bin/initdb` paths, the `bin` directory of the highest major version."""
    versions = [
        (int(p.parent.parent.name), p.parent) for p in initdbs if p.parent.parent.name.isdigit()
    ]
    return max(versions)[1] if versions else None


def major_version(version_text: str) -> str:
    """The major version in `postgres --version`'s answer ("postgres (PostgreSQL) 15.18 ...")."""
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", version_text)
    if found is None:
        raise DatabaseUnavailable(
            f"cannot tell PostgreSQL's version from {version_text!r}; {INSTALL}"
        )
    return found.group(1)


def server_user() -> str | None:
    """The OS user PostgreSQL runs as: this process's own, or `postgres` when this is root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise DatabaseUnavailable(
            f"PostgreSQL refuses to run as root and there is no {OS_USER!r} user to run it as;"
            f" {INSTALL} (it creates that user), or run as another user"
        ) from None
    return OS_USER


def unreachable_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The first existing directory from / down to `path` that the user `uid` (primary group
    `gid`, no other) may not enter, or None."""
    for directory in [*reversed(path.parents), path]:
        try:
            status = directory.stat()
        except FileNotFoundError:
            return None  # made below by this process, searchable (mode 0o755 under umask 022)
        if status.st_uid == uid:
            allowed = status.st_mode & 0o100
        elif status.st_gid == gid:
            allowed = status.st_mode & 0o010
        else:
            allowed = status.st_mode & 0o001
        if not allowed:
            return directory
    return None


def _prepare(root: Path, user: str | None) -> None:
    """Make `root`, owned by `user` when given, after checking that user can reach it."""
    if user is not None:
        entry = pwd.getpwnam(user)
        blocked = unreachable_ancestor(root.parent, entry.pw_uid, entry.pw_gid)
        if blocked is not None:
            raise DatabaseUnavailable(
                f"PostgreSQL runs as the {user!r} user (it refuses root), who cannot enter"
                f" {blocked} on the way to {root}. Keep the stack elsewhere (`pipedeploy up"
                f" --home /var/tmp/pipedeploy ...`) or let it through: chmod o+x {blocked}"
            )
    root.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)


def _initdb(programs: Path, root: Path, user: str | None, throwaway: bool) -> None:
    """A new cluster in `root`/data with the superuser ROLE and a new password kept in
    `root`/password; made in `data.new` and renamed, so a half-made one is never reused."""
    staging, password_file = root / "data.new", root / "password"
    shutil.rmtree(staging, ignore_errors=True)
    password_file.write_text(secrets.token_urlsafe(24))
    password_file.chmod(0o600)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(password_file, entry.pw_uid, entry.pw_gid)
    command = [
        str(programs / "initdb"),
        "-D",
        str(staging),
        "-U",
        ROLE,
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]
    if throwaway:
        command.append("--no-sync")  # nothing to keep: skip the fsyncs
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=root, timeout=120, **as_user(user)
    )
    if result.returncode != 0:
        raise DatabaseUnavailable(
            f"initdb could not make a PostgreSQL cluster in {staging} (exit code"
            f" {result.returncode}); it said:\n{_tail(result.stdout + result.stderr)}"
        )
    staging.rename(root / "data")


def _check_reusable(data: Path, version: str) -> None:
    """Refuse a cluster of another major version, or one whose postmaster still runs."""
    made_by = (data / "PG_VERSION").read_text().strip()
    if made_by != version:
        raise DatabaseUnavailable(
            f"the PostgreSQL cluster in {data} was made by PostgreSQL {made_by}, and the"
            f" installed one is {version}: upgrade it (pg_upgrade) or remove {data.parent} to"
            " start with an empty database"
        )
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        if _alive(pid):
            raise DatabaseUnavailable(
                f"the PostgreSQL cluster in {data} is running already (pid {pid}), probably"
                " for another `pipedeploy up` with the same --home: stop that one, or this"
                f" leftover with `kill -INT {pid}`, or pass another --home"
            )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_until_ready(cluster: PostgreSQL, programs: Path, timeout_s: float) -> None:
    """Return once the cluster accepts connections; fail with its log's last lines if it
    exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    probe = [str(programs / "pg_isready"), "-q", "-h", HOST, "-p", str(cluster.port), "-t", "2"]
    while True:
        if not cluster.alive():
            raise DatabaseUnavailable(
                f"PostgreSQL exited with code {cluster.popen.returncode} as it started; its log"
                f" ({cluster.log_path}) ends with:\n{cluster.log_tail()}"
            )
        if subprocess.run(probe, check=False).returncode == 0:
            return
        if time.monotonic() >= deadline:
            raise DatabaseUnavailable(
                f"PostgreSQL did not accept connections on {HOST}:{cluster.port} within"
                f" {timeout_s:g} s; its log ({cluster.log_path}) ends with:\n{cluster.log_tail()}"
            )
        time.sleep(0.1)


def _ensure_database(cluster: PostgreSQL, programs: Path, password: str) -> None:
    """Create the database DATABASE unless the cluster has it (a reused one does)."""
    target = ["-h", HOST, "-p", str(cluster.port), "-U", ROLE]
    env = client_environment(password)
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
    listed = [str(programs / "psql"), "-X", "-A", "-t", *target, "-d", "postgres", "-c", query]
    if _output(listed, env) == "1":
        return
    _output([str(programs / "createdb"), *target, DATABASE], env)


def _output(command: list[str], env: dict[str, str] | None = None) -> str:
    """What `command` prints; a failure raises `DatabaseUnavailable` with what it said."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    if result.returncode != 0:
        raise DatabaseUnavailable(
            f"{Path(command[0]).name} failed (exit code {result.returncode}):"
            f"\n{_tail(result.stdout + result.stderr)}"
        )
    return result.stdout.strip()


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
