"""The `pipedeploy datastore` commands as a user runs them: subprocesses on a local data store
saved on the session's server (the SDK's data-store verbs: tests/integration/test_sdk_datastore.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from prefect_pipedeploy.datastore.configured import DATA_STORE_VARIABLE


def pipedeploy_datastore(
    *args: str, reference: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_pipedeploy.cli", "datastore", *args],
        env={**os.environ, DATA_STORE_VARIABLE: reference},
        capture_output=True,
        input=stdin,
        timeout=60,
    )


def test_cli_datastore_commands(data_store: str, tmp_path: Path) -> None:
    prefix = f"cli-{uuid.uuid4().hex[:6]}"
    source = tmp_path / "data.csv"
    source.write_text("a,b\n1,2\n")

    put = pipedeploy_datastore("put", str(source), f"{prefix}/data.csv", reference=data_store)
    assert put.returncode == 0, put.stderr
    assert f"-> {prefix}/data.csv (8 bytes)" in put.stdout.decode()

    ls = pipedeploy_datastore("ls", prefix, reference=data_store)
    assert ls.returncode == 0, ls.stderr
    size, _, key = ls.stdout.decode().split()
    assert (size, key) == ("8", f"{prefix}/data.csv")

    info = pipedeploy_datastore("info", f"{prefix}/data.csv", reference=data_store)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["size"] == 8

    get = pipedeploy_datastore(
        "get", f"{prefix}/data.csv", str(tmp_path / "copy.csv"), reference=data_store
    )
    assert get.returncode == 0, get.stderr
    assert (tmp_path / "copy.csv").read_text() == "a,b\n1,2\n"
    to_stdout = pipedeploy_datastore("get", f"{prefix}/data.csv", "-", reference=data_store)
    assert to_stdout.stdout == b"a,b\n1,2\n"

    rm = pipedeploy_datastore("rm", f"{prefix}/data.csv", reference=data_store)
    assert rm.returncode == 0, rm.stderr
    assert pipedeploy_datastore("ls", prefix, reference=data_store).stdout == b""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("rm", "no/such.txt"), "error: no object 'no/such.txt' in the data store"),
        (("info", "../escape"), "error: data store key '../escape' has a `..` segment"),
        (("--store", "pipedeploy-local-data-store/absent", "ls"), "error: data store block"),
    ],
)
def test_cli_errors_are_one_line(data_store: str, args: tuple[str, ...], message: str) -> None:
    result = pipedeploy_datastore(*args, reference=data_store)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.startswith(message), stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
