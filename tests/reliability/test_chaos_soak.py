"""A seeded chaos soak: a mixed load while pods, the worker and S3 are killed at random.

Small by default (30 s of load, a minute or two in all); larger on demand:

    PIPEDEPLOY_SOAK_SECONDS=300 PIPEDEPLOY_SOAK_SEED=7 \
        .venv/bin/python -m pytest tests/reliability/test_chaos_soak.py -s

Four deployments of one pipeline (`soak_step`, which notes each attempt it starts in a journal
file): elastic, elastic with a 6 MiB output to S3 (multipart), a parallel low-latency pod, a
queue-mode low-latency pod with a 1 MiB output to S3. The data store is an `S3DataStore` on
moto's server in its own process. `random.Random(seed)` picks the next deployment, the pause
before the next execution, the next fault and when it strikes: SIGKILL a pod; SIGKILL the
worker and start a new one (which adopts what the dead one left); SIGKILL S3 and start it again
on its port (moto keeps nothing: the bucket comes back empty). At the end every accepted
execution is waited for, and one line is printed (`pytest -s` shows it):

    soak seed=S duration=D: accepted A, succeeded S, failed-with-reason F, lost 0, duplicated 0
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from pydantic import SecretStr

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy._compat import save_block_sync
from prefect_pipedeploy.datastore import S3DataStore
from prefect_pipedeploy.datastore.code import CODE_PREFIX
from prefect_pipedeploy.datastore.configured import DATA_STORE_VARIABLE, register_datastore_blocks
from prefect_pipedeploy.stack import ChildProcess
from prefect_pipedeploy.status import settled
from tests.support.eventually import EventuallyTimeout, eventually
from tests.support.executions import deploy, pool_per_test, unique, wait_until_up
from tests.support.ledger import check_ledger, read_ledger
from tests.support.processes import cmdline, start_worker
from tests.support.s3_server import REGION, MotoServer, running_moto_server, s3_client

SOAK_SECONDS = float(os.environ.get("PIPEDEPLOY_SOAK_SECONDS", "30"))
SOAK_SEED = int(os.environ.get("PIPEDEPLOY_SOAK_SEED", "1"))
MAX_RETRIES = 1
SETTLE_S = 180  # how long every accepted execution gets to settle after the load
MiB = 1024 * 1024


@dataclass
class Kind:
    """One deployment of the mix: how often it is picked, and its execution's inputs."""

    name: str
    weight: int
    inputs: dict
    mib: int = 0


@dataclass
class Soak:
    """What the soak drives: its S3 server, its current worker, and what it has done."""

    log_dir: Path
    pool: str
    worker_env: dict[str, str]
    bucket: str
    s3: MotoServer
    worker: ChildProcess | None = None
    servers: list = field(default_factory=list)  # the running_moto_server contexts to close
    workers: list[ChildProcess] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)

    def start_worker(self) -> None:
        self.worker = start_worker(self.pool, self.log_dir, env=self.worker_env)
        self.workers.append(self.worker)

    def restart_s3(self) -> None:
        port = int(self.s3.endpoint_url.rsplit(":", 1)[1])
        os.kill(self.s3.process.pid, signal.SIGKILL)
        self.s3.process.wait(10)
        context = running_moto_server(self.log_dir, port, buckets=[self.bucket])
        self.s3 = context.__enter__()
        self.servers.append(context)

    def close(self) -> None:
        while self.workers:
            self.workers.pop().stop()
        while self.servers:
            self.servers.pop().__exit__(None, None, None)


def pods(deployment_ids: list[str]) -> list[psutil.Process]:
    """Every pod of these deployments, whichever worker started it."""
    return [
        p
        for p in psutil.process_iter()
        if "prefect_pipedeploy.engine.pod" in (line := cmdline(p))
        and any(d in line for d in deployment_ids)
    ]


def journal_duplicates(journal: Path, run_counts: dict[str, int]) -> list[str]:
    """Runs whose journal shows two executions of one attempt, or more starts than attempts."""
    starts: Counter = Counter()
    attempts: Counter = Counter()
    for line in journal.read_text().splitlines() if journal.exists() else []:
        run_id, attempt, _pid = line.split()
        starts[run_id] += 1
        attempts[(run_id, attempt)] += 1
    twice = {run_id for (run_id, _), n in attempts.items() if n > 1}
    too_many = {r for r, n in starts.items() if n > max(run_counts.get(r, 0), MAX_RETRIES + 1)}
    return sorted(twice | too_many)


pool, sdk = pool_per_test("soak")  # one pool per test: each test owns its workers


@pytest.fixture
def soak(pool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Soak]:
    temp = tmp_path / "tmp"
    (temp / "scratch").mkdir(parents=True)
    bucket = f"soak-{uuid.uuid4().hex[:12]}"
    first = running_moto_server(tmp_path, buckets=[bucket])
    server = first.__enter__()
    store = S3DataStore(
        bucket=bucket,
        endpoint_url=server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=SecretStr("soak-key-id"),
        aws_secret_access_key=SecretStr(f"soak-secret-{uuid.uuid4().hex}"),
        multipart_threshold_mib=5,
        multipart_part_size_mib=5,
    )
    register_datastore_blocks()
    name = unique("soak-store")
    save_block_sync(store, name)
    monkeypatch.setenv(DATA_STORE_VARIABLE, f"{S3DataStore.get_block_type_slug()}/{name}")
    env = {
        "TMPDIR": str(temp),
        "PIPEDEPLOY_TESTS_SCRATCH": str(temp / "scratch"),
        "PIPEDEPLOY_SOAK_JOURNAL": str(tmp_path / "journal.txt"),
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_DRAIN_GRACE_S": "3",
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_POD_HEARTBEAT_TIMEOUT_S": "5",
        "PREFECT_INTEGRATIONS_PIPEDEPLOY_PENDING_RECOVERY_S": "20",
    }
    found = Soak(tmp_path, pool, env, bucket, server, servers=[first])
    try:
        yield found
    finally:
        found.close()


@pytest.mark.timeout(SOAK_SECONDS + SETTLE_S + 300)
def test_chaos_soak(sdk: PipeDeploy, pool: str, soak: Soak, tmp_path: Path) -> None:
    """Fault: at random (seeded), SIGKILL a pod, SIGKILL the worker (a new one adopts what it
    left), SIGKILL S3 and start it again, under a mixed load of elastic and low-latency
    executions, some with outputs to S3. No accepted execution is lost or run twice; each one
    that fails says why. Before: (see the report of the run that added it)."""
    rng = random.Random(SOAK_SEED)
    soak.start_worker()
    blob = [{"pipeline_output_name": "blob", "datastore_path": "soak/{execution_id}.bin"}]
    common = {"max_retries": MAX_RETRIES, "ram_request": "512MiB"}
    kinds = [
        Kind(deploy(sdk, "soak_step", **common), 1, {"sleep_s": 0.3}),
        Kind(deploy(sdk, "soak_step", outputs_mapping=blob, **common), 2, {"sleep_s": 0.2}, mib=6),
        Kind(
            deploy(
                sdk,
                "soak_step",
                mode="low_latency",
                enable_parallel_executions=True,
                max_parallel_executions_per_pod=4,
                **common,
            ),
            5,
            {"sleep_s": 1.0},
        ),
        Kind(
            deploy(sdk, "soak_step", mode="low_latency", outputs_mapping=blob, **common),
            3,
            {"sleep_s": 0.2},
            mib=1,
        ),
    ]
    for kind in kinds[2:]:
        wait_until_up(sdk, kind.name, timeout_s=90)
    deployment_ids = [sdk.get_deployment(kind.name)["id"] for kind in kinds]

    def kill_a_pod() -> None:
        found = pods(deployment_ids)
        if found:
            rng.choice(sorted(found, key=lambda p: p.pid)).kill()

    def kill_the_worker() -> None:
        assert soak.worker is not None
        os.kill(soak.worker.popen.pid, signal.SIGKILL)
        soak.worker.popen.wait(10)
        soak.start_worker()

    faults = {"pod": kill_a_pod, "worker": kill_the_worker, "s3": soak.restart_s3}
    accepted: list[str] = []
    kind_of: dict[str, str] = {}  # execution id -> "elastic" / "elastic+s3" / "pod" / "queue+s3"
    labels = dict(
        zip((k.name for k in kinds), ("elastic", "elastic+s3", "pod", "queue+s3"), strict=True)
    )
    started = time.monotonic()
    done = threading.Event()

    def strike() -> None:  # the faults, in a thread of their own: the load goes on meanwhile
        while not done.wait(rng_faults.uniform(4, 9)):
            fault = rng_faults.choice(sorted(faults))
            faults[fault]()
            soak.faults[fault] += 1

    rng_faults = random.Random(rng.random())
    striker = threading.Thread(target=strike)
    striker.start()
    try:
        while time.monotonic() - started < SOAK_SECONDS:
            kind = rng.choices(kinds, weights=[k.weight for k in kinds])[0]
            inputs = {"label": f"n{len(accepted)}", "mib": kind.mib, **kind.inputs}
            created = sdk.run_deployment(kind.name, inputs, wait_for_completion=False)
            accepted.append(created["execution_id"])
            kind_of[created["execution_id"]] = labels[kind.name]
            time.sleep(rng.uniform(0.1, 0.6))
    finally:
        done.set()
        striker.join()
    load_s = time.monotonic() - started
    assert soak.worker is not None and soak.worker.alive()

    def unsettled() -> list[str]:  # final, and past the retry grace when retries remain
        runs = {str(run.id): run for run in read_ledger(pool).runs}
        now = datetime.now(timezone.utc)
        return [i for i in accepted if i not in runs or not settled(runs[i], MAX_RETRIES, now)]

    with contextlib.suppress(EventuallyTimeout):  # what is left counts as lost
        eventually(unsettled, SETTLE_S, 1.0, until=lambda left: not left)
    ledger = read_ledger(pool)
    runs = {str(run.id): run for run in ledger.runs}
    lost = sorted(unsettled())
    final = [i for i in accepted if i not in lost]
    counts = {run_id: run.run_count for run_id, run in runs.items()}
    duplicated = sorted(
        {i for i in accepted if counts.get(i, 0) > MAX_RETRIES + 1}
        | set(journal_duplicates(tmp_path / "journal.txt", counts))
    )
    succeeded = [i for i in final if runs[i].state.is_completed()]
    failed = [i for i in final if i not in succeeded]
    silent = {str(r.id) for r in ledger.silent_failures}
    with_reason = [i for i in failed if i not in silent]
    print(
        f"\nsoak seed={SOAK_SEED} duration={load_s:.0f}s: accepted {len(accepted)}, "
        f"succeeded {len(succeeded)}, failed-with-reason {len(with_reason)}, lost {len(lost)}, "
        f"duplicated {len(duplicated)} (faults: {dict(soak.faults)})"
    )
    for i in failed:
        state = runs[i].state
        print(f"  failed {i} ({state.name}, run_count {runs[i].run_count}): {state.message}")
    assert not lost, [
        (i, kind_of[i], runs[i].state.name if i in runs else None, runs[i].run_count) for i in lost
    ]
    assert not duplicated, duplicated
    assert len(with_reason) == len(failed), [i for i in failed if i in silent]
    sizes = {
        item["Key"]: item["Size"]
        for item in s3_client(soak.s3.endpoint_url)
        .list_objects_v2(Bucket=soak.bucket)
        .get("Contents", [])
    }
    # the bucket is also the data store the deployments' code was shipped to (code/...)
    sizes = {key: size for key, size in sizes.items() if not key.startswith(CODE_PREFIX)}
    expected = {f"soak/{i}.bin" for i in accepted}
    assert set(sizes) <= expected, set(sizes) - expected
    assert set(sizes.values()) <= {1 * MiB, 6 * MiB}, sizes  # no partial object
    check_ledger(pool, max_attempts=MAX_RETRIES + 1)
    soak.close()
    leftover = [
        p for p in psutil.process_iter() if any(d in cmdline(p) for d in deployment_ids + accepted)
    ]
    assert not leftover, [cmdline(p) for p in leftover]
    eventually(
        lambda: sorted(p.name for p in (tmp_path / "tmp").iterdir()),
        15,
        until=lambda names: names == ["scratch"],
    )
