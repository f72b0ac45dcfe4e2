"""A real S3 server for tests: moto's server in its own process on a free 127.0.0.1 port.

For: tests that need S3 to behave like a network service (connections, multipart uploads, a
server that dies). The fixtures are registered for every test module by tests/conftest.py
(`pytest_plugins`); ask for them by name:

`s3_server` (one per test session) yields the endpoint URL, `s3_bucket` a fresh bucket on it,
`s3_store` an `S3DataStore` on that bucket with fake credentials set on the block.
`running_moto_server()` starts a private server that a test may kill (an end-to-end test).
Not for: patching boto3 in-process (moto's `mock_aws`); nothing here touches real AWS.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from pydantic import SecretStr

from prefect_pipedeploy.datastore import S3DataStore
from tests.support.eventually import EventuallyTimeout, eventually

FAKE_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


@dataclass
class MotoServer:
    """A moto server process and the URL it answers on."""

    process: subprocess.Popen[bytes]
    endpoint_url: str
    log_path: Path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(endpoint_url: str) -> bool:
    try:
        urllib.request.urlopen(endpoint_url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an HTTP error is still an answer
    except OSError:
        return False
    return True


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate, give it a grace period, then kill."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


_WITH_BUCKETS = """
import sys
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main

region, names = sys.argv[1], sys.argv[2]
for name in names.split(","):
    s3_backends[DEFAULT_ACCOUNT_ID]["aws"].create_bucket(name, region)
main(sys.argv[3:])
"""


@contextmanager
def running_moto_server(
    log_dir: Path, port: int | None = None, buckets: Sequence[str] = ()
) -> Iterator[MotoServer]:
    """Start moto's server on `port` (default: a free one) with `buckets` already made, wait
    until it answers, stop it after. moto keeps its buckets in memory only (it has no
    persistence for S3): a server started again after a kill is empty but for `buckets`, which
    exist before it answers, as a real S3 bucket outlives an outage of its server."""
    port = port or free_port()
    log_path = log_dir / f"moto-{port}.log"
    if buckets:
        command = [sys.executable, "-c", _WITH_BUCKETS, REGION, ",".join(buckets)]
    else:
        command = [sys.executable, "-m", "moto.server"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = MotoServer(process, f"http://127.0.0.1:{port}", log_path)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"it exited with code {process.returncode}")
        return _answers(server.endpoint_url)

    try:
        try:
            eventually(answers, START_TIMEOUT_S, 0.1)
        except (RuntimeError, EventuallyTimeout) as exc:
            raise RuntimeError(
                f"moto server on port {port} did not start ({exc}):\n{log_path.read_text()}"
            ) from exc
        yield server
    finally:
        stop_process(process)


@cache
def s3_client(endpoint_url: str) -> Any:
    """A plain boto3 client on the server, for arranging and inspecting what tests expect."""
    return boto3.session.Session(region_name=REGION, **FAKE_CREDENTIALS).client(
        "s3", endpoint_url=endpoint_url, config=Config(retries={"max_attempts": 1})
    )


def make_bucket(endpoint_url: str) -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client(endpoint_url).create_bucket(Bucket=name)
    return name


def make_store(endpoint_url: str, bucket: str, **fields: Any) -> S3DataStore:
    """An `S3DataStore` with the fake credentials on the block, not in the environment."""
    return S3DataStore(
        bucket=bucket,
        endpoint_url=endpoint_url,
        region_name=REGION,
        aws_access_key_id=SecretStr(FAKE_CREDENTIALS["aws_access_key_id"]),
        aws_secret_access_key=SecretStr(FAKE_CREDENTIALS["aws_secret_access_key"]),
        **fields,
    )


def multipart_store(endpoint_url: str, bucket: str) -> S3DataStore:
    """An `S3DataStore` that uploads anything over 5 MiB in parts of 5 MiB."""
    return make_store(endpoint_url, bucket, multipart_threshold_mib=5, multipart_part_size_mib=5)


@pytest.fixture(scope="session", name="s3_server")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto server shared by the whole test session."""
    with running_moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server.endpoint_url


@pytest.fixture(name="s3_bucket")
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket on the session's server."""
    return make_bucket(s3_server)


@pytest.fixture(name="s3_store")
def s3_store(s3_server: str, s3_bucket: str) -> S3DataStore:
    """An `S3DataStore` on a fresh bucket."""
    return make_store(s3_server, s3_bucket)
