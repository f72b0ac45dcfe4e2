"""The S3 server killed mid-upload of an execution's output, and started again on its port.

moto's server runs as its own process; the worker's data store is an `S3DataStore` block on it
(multipart uploads of 5 MiB parts). The pipeline returns a 32 MiB file mapped to the store; once
S3 shows the multipart upload begun, the server gets SIGKILL and a new one starts on the same
port. moto keeps its buckets in memory only (it has no persistence option for S3), so the new
server re-creates the bucket, empty, before it answers (`running_moto_server(buckets=...)`):
what a client sees of a real S3 server back from an outage, less the objects it held.
"""

from __future__ import annotations

import hashlib
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import SecretStr

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy._compat import save_block_sync
from prefect_pipedeploy.datastore import S3DataStore
from prefect_pipedeploy.datastore.configured import DATA_STORE_VARIABLE, register_datastore_blocks
from tests.support.eventually import eventually
from tests.support.executions import deploy, pool_per_test, unique, wait_until_up
from tests.support.ledger import check_ledger
from tests.support.processes import start_worker
from tests.support.s3_server import REGION, MotoServer, running_moto_server, s3_client
from tests.support.streams import MiB, payload

OUTPUT_MIB = 32
SEED = 12
KEY_TEMPLATE = "blobs/{execution_id}.bin"


@dataclass
class Outage:
    """A moto server the test may kill and start again, the store on it, and its secret."""

    log_dir: Path
    server: MotoServer
    bucket: str
    secret: str
    reference: str

    def kill_and_restart(self) -> None:
        port = int(self.server.endpoint_url.rsplit(":", 1)[1])
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(10)
        self._restarted = running_moto_server(self.log_dir, port, buckets=[self.bucket])
        self.server = self._restarted.__enter__()

    def close(self) -> None:
        restarted = getattr(self, "_restarted", None)
        if restarted is not None:
            restarted.__exit__(None, None, None)


pool, sdk = pool_per_test("s3-outage")  # one pool per test: each test owns its workers


@pytest.fixture
def outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    """moto on a free port, a bucket, an S3 data store block on it (its secret unique to the
    test, so a message that leaked it would show), set as this process's data store."""
    with running_moto_server(tmp_path) as server:
        bucket = f"outage-{uuid.uuid4().hex[:12]}"
        s3_client(server.endpoint_url).create_bucket(Bucket=bucket)
        secret = f"very-secret-{uuid.uuid4().hex}"
        store = S3DataStore(
            bucket=bucket,
            endpoint_url=server.endpoint_url,
            region_name=REGION,
            aws_access_key_id=SecretStr("outage-key-id"),
            aws_secret_access_key=SecretStr(secret),
            multipart_threshold_mib=5,
            multipart_part_size_mib=5,
        )
        register_datastore_blocks()
        name = unique("outage-store")
        save_block_sync(store, name)
        reference = f"{S3DataStore.get_block_type_slug()}/{name}"
        monkeypatch.setenv(DATA_STORE_VARIABLE, reference)
        found = Outage(tmp_path, server, bucket, secret, reference)
        try:
            yield found
        finally:
            found.close()


def objects(outage: Outage) -> dict[str, int]:
    listing = s3_client(outage.server.endpoint_url).list_objects_v2(Bucket=outage.bucket)
    return {item["Key"]: item["Size"] for item in listing.get("Contents", [])}


def uploads_in_flight(outage: Outage) -> list[str]:
    listing = s3_client(outage.server.endpoint_url).list_multipart_uploads(Bucket=outage.bucket)
    return [upload["Key"] for upload in listing.get("Uploads", [])]


def stored_sha256(outage: Outage, key: str) -> str:
    body = s3_client(outage.server.endpoint_url).get_object(Bucket=outage.bucket, Key=key)["Body"]
    return hashlib.sha256(body.read()).hexdigest()


def history(execution_id: str) -> list[tuple[str, str]]:
    async def read() -> list[tuple[str, str]]:
        async with get_client() as client:
            states = await client.read_flow_run_states(uuid.UUID(execution_id))
        return [(state.name, state.message or "") for state in states]

    return run_coro_as_sync(read())


@pytest.mark.parametrize("mode", ["elastic", "low_latency"])
def test_s3_killed_mid_upload_leaves_no_partial_object_and_no_false_success(
    sdk: PipeDeploy, pool: str, outage: Outage, tmp_path: Path, mode: str
) -> None:
    """Fault: SIGKILL of the S3 server while an execution uploads its 32 MiB output in parts,
    then a new server on the same port (bucket re-created, empty).

    Held before: the key is never partial (a multipart upload is completed only once every
    part is in), the execution never reports Succeeded without its object, and no secret is in
    its message. The first attempt fails naming the output, the data-store path and the
    unreachable endpoint; its retry stores the complete object."""
    temp = tmp_path / "tmp"
    (temp / "scratch").mkdir(parents=True)
    env = {
        "TMPDIR": str(temp),  # the worker's, its pods' and its executions' temporary files
        "PIPEDEPLOY_TESTS_SCRATCH": str(temp / "scratch"),  # where the pipeline writes its file
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": "5",
    }
    worker = start_worker(pool, tmp_path, env=env)
    try:
        name = deploy(
            sdk,
            "big_output",
            mode=mode,
            max_retries=1,
            ram_request="256MiB",
            outputs_mapping=[{"pipeline_output_name": "blob", "datastore_path": KEY_TEMPLATE}],
        )
        if mode == "low_latency":
            wait_until_up(sdk, name)
        execution_id = sdk.run_deployment(
            name, {"mib": OUTPUT_MIB, "seed": SEED}, wait_for_completion=False
        )["execution_id"]
        key = KEY_TEMPLATE.format(execution_id=execution_id)
        in_flight = eventually(
            lambda: uploads_in_flight(outage), 90, 0.02, what="the output's multipart upload"
        )
        assert in_flight == [key]
        outage.kill_and_restart()
        run_coro_as_sync(sdk.await_execution(execution_id, 180))
        execution = sdk.get_pipeline_execution(execution_id)
        stored = objects(outage)
        expected = payload(OUTPUT_MIB * MiB, seed=SEED)
        message = execution.get("message") or ""
        states = history(execution_id)
        print(f"s3 outage ({mode}): states {[state for state, _ in states]}")
        assert not [text for _, text in states if outage.secret in text]
        failures = [text for state, text in states if state == "Failed"]
        if failures:  # the attempt the kill hit
            assert f"output 'blob' could not be stored at data-store path {key!r}" in failures[0]
            # the part on its way when the server died meets the dead server (unreachable), or,
            # sent a moment later, the new one, which never saw that upload (it answers 500)
            assert (
                "is unreachable or dropped the connection" in failures[0]
                or "S3 answered 500" in failures[0]
            ), failures[0]
        assert outage.secret not in str(execution) and "outage-key-id" not in message
        logs = " ".join(line["message"] for line in sdk.get_pipeline_execution_logs(execution_id))
        assert outage.secret not in logs
        if execution["status"] == "Succeeded":  # on its retry
            assert execution["attempts"] == len(failures) + 1, (execution, states)
            assert stored == {key: len(expected)}, stored
            assert stored_sha256(outage, key) == hashlib.sha256(expected).hexdigest()
            assert execution["outputs"]["sha256"] == hashlib.sha256(expected).hexdigest()
        else:
            assert execution["status"] in ("Failed", "Error"), execution
            assert "output 'blob' could not be stored" in message, execution
            assert f"data-store path {key!r}" in message, execution
            assert "unreachable" in message or "does not exist" in message, execution
            assert stored in ({}, {key: len(expected)}), stored
            if stored:
                assert stored_sha256(outage, key) == hashlib.sha256(expected).hexdigest()
        assert not uploads_in_flight(outage)
        check_ledger(pool, max_attempts=2)
    finally:
        worker.stop()
    eventually(lambda: sorted(p.name for p in temp.iterdir()), 15, until=lambda x: x == ["scratch"])
