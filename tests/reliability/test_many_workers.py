"""Three workers on one pool under a burst of executions: none twice, order and RAM kept.

Three `pipedeploy worker` processes serve one pool with a pool-wide RAM cap smaller than their
capacities together. A burst of `BURST_RUNS` executions (the issue's 300; fewer or more with
PIPEDEPLOY_BURST_RUNS) of a trivial pipeline (`mark`, which leaves one file per attempt, and
sleeps 0 s), all due at once, waits for them when they start: a queue-mode low-latency
deployment (FIFO, one at a time across the pool), a parallel low-latency deployment (at most
`PARALLELISM` at once per pod) and two elastic deployments whose RAM requests do not all fit at
once (admission decides). While it runs, the RAM the pool's processes reserve is sampled.
"""

from __future__ import annotations

import datetime
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Scheduled
from prefect.utilities.asyncutils import run_coro_as_sync

from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.prefect_api.runs import create_run
from prefect_pipedeploy.runtimes.process import runtime_process_of
from prefect_pipedeploy.stack import ChildProcess
from tests.support.eventually import eventually
from tests.support.executions import deploy, unique
from tests.support.ledger import check_ledger, read_ledger
from tests.support.processes import start_worker

WORKERS = 3
WORKER_CAPACITY = "2GiB"  # 6GiB together, far above the pool's cap
POD_MIB = 320  # 2 low-latency deployments x 3 workers: 6 pods, 1920MiB
ELASTIC_MIB = (256, 384)  # what is left under the cap fits 256 + 384 or 2 x 256, never more
CAP_MIB = 6 * POD_MIB + sum(ELASTIC_MIB)
PARALLELISM = 8
#: How many executions the burst has: PIPEDEPLOY_BURST_RUNS, default the issue's 300 (what they
#: cost is in the test's docstring); QUEUE_RUNS and ELASTIC_RUNS of them, the rest parallel.
BURST_RUNS = int(os.environ.get("PIPEDEPLOY_BURST_RUNS", "300"))
QUEUE_RUNS, ELASTIC_RUNS = 10, 4
PARALLEL_RUNS = BURST_RUNS - QUEUE_RUNS - ELASTIC_RUNS
PARALLEL = "parallel"
SLOW_RUNS = 6  # elastic runs slow to start, on two workers
T = TypeVar("T")


@pytest.fixture
def pool(prefect_api: str) -> str:  # one pool for this test: it owns its three workers
    return unique("many")


@pytest.fixture
def sdk(pool: str) -> Iterator[PipeDeploy]:
    sdk = PipeDeploy(work_pool_name=pool)
    sdk.set_pool_ram_cap(f"{CAP_MIB}MiB")
    yield sdk
    sdk.set_pool_ram_cap(None)


def start_workers(pool: str, logs: Path) -> list[ChildProcess]:
    with ThreadPoolExecutor(WORKERS) as starting:
        futures = [
            starting.submit(start_worker, pool, logs, "--ram-capacity", WORKER_CAPACITY)
            for _ in range(WORKERS)
        ]
        return [f.result() for f in futures]


@dataclass
class Burst:
    """What the test created: run ids by deployment, in creation order, and the RAM of each."""

    ids: dict[str, list[str]] = field(default_factory=dict)
    mib_of_run: dict[str, int] = field(default_factory=dict)
    run_of_marker: dict[str, str] = field(default_factory=dict)
    created_in_s: float = 0.0


@dataclass
class Attempt:
    """One attempt of a run, from the file `mark` left."""

    marker: str
    pid: int
    worker_pid: int
    started: float
    ended: float


def attempts(marks: Path) -> list[Attempt]:
    found = []
    for path in marks.iterdir():
        marker, pid, ppid, _ = path.name.split(".")
        times = path.read_text().split()
        assert len(times) == 2, f"attempt {path.name} never finished: {times}"
        found.append(Attempt(marker, int(pid), int(ppid), float(times[0]), float(times[1])))
    return found


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at any moment (an end before a start at the same time)."""
    edges = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def runtime_processes(workers: list[ChildProcess]) -> frozenset[tuple[str, str, int]]:
    """The pods and elastic executions alive under the workers, as (kind, id, pid)."""
    parents = {worker.popen.pid for worker in workers}
    found = set()
    for process in psutil.process_iter(["ppid", "cmdline", "status"]):
        if process.info["ppid"] not in parents or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        what = runtime_process_of(process.info["cmdline"] or [])
        if what is not None:
            found.add((*what, process.pid))
    return frozenset(found)


class Sampler:
    """Samples, every 0.1 s while the burst runs, which runtime processes are alive, and every
    0.5 s how many MiB of the pool's cap are held."""

    def __init__(self, workers: list[ChildProcess], sdk: PipeDeploy) -> None:
        self.processes: list[frozenset[tuple[str, str, int]]] = []
        self.held_mib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(workers, sdk))

    def _sample(self, workers: list[ChildProcess], sdk: PipeDeploy) -> None:
        rounds = 0
        while not self._stop.is_set():
            self.processes.append(runtime_processes(workers))
            if rounds % 5 == 0:  # an API read
                cap = sdk.get_pool_ram_cap()
                self.held_mib.append(cap["held_mib"] if cap else 0)
            rounds += 1
            time.sleep(0.1)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def create_burst(runs: list[tuple[uuid.UUID, int, dict]]) -> Burst:
    """Create the runs (deployment id, MiB, parameters) one after the other, each scheduled a
    microsecond after the one before (a queue's runs in the order given). One client, before
    the workers start: a SQLite server answers concurrent creates with 503 (the client backs off
    for seconds), creates made while three workers write states crawled at 0.5 a second, and
    Prefect's bulk create (100 runs in one transaction) held the database so long that its
    inserts failed, "database is locked"."""
    burst = Burst()
    due = datetime.datetime.now(datetime.timezone.utc)

    async def create() -> None:
        async with get_client() as client:
            for i, (deployment_id, mib, parameters) in enumerate(runs):
                at = due + datetime.timedelta(microseconds=i)
                run = await create_run(  # a 503 retried within milliseconds
                    client, deployment_id, parameters=parameters, state=Scheduled(scheduled_time=at)
                )
                burst.ids.setdefault(str(deployment_id), []).append(str(run.id))
                burst.mib_of_run[str(run.id)] = mib
                burst.run_of_marker[parameters["marker"]] = str(run.id)

    started = time.monotonic()
    run_coro_as_sync(create())
    burst.created_in_s = time.monotonic() - started
    return burst


def histories(run_ids: list[str]) -> dict[str, list[str]]:
    """Every state of each run, oldest first: time, type, name, message (what a run executed
    twice went through)."""

    async def read() -> dict[str, list[str]]:
        found = {}
        async with get_client() as client:
            for run_id in run_ids:
                states = await client.read_flow_run_states(uuid.UUID(run_id))
                found[run_id] = [
                    f"{s.timestamp.isoformat()} {s.type.value} {s.name!r} {s.message!r}"
                    for s in sorted(states, key=lambda s: s.timestamp)
                ]
        return found

    return run_coro_as_sync(read())


def explain_twice(burst: Burst, done: list[Attempt], markers: list[str], logs: Path) -> str:
    """What the test saw of runs executed more than once: their attempts, state histories and
    every log line of the workers and pods that names them."""
    lines = []
    log_files = [
        *logs.glob("*.log"),
        *Path(os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME"]).rglob("*.log"),
    ]
    for marker in markers:
        run_id = burst.run_of_marker[marker]
        lines.append(f"{marker} = run {run_id}")
        lines += [f"  attempt {a}" for a in done if a.marker == marker]
        lines += [f"  state {s}" for s in histories([run_id])[run_id]]
        for path in log_files:
            for line in path.read_text(errors="replace").splitlines():
                if run_id in line:
                    lines.append(f"  {path.name}: {line}")
    return "\n".join(lines)


def interleaved(*groups: list[T]) -> list[T]:
    """The items of every group in one list, each group's spread evenly over it, in order."""
    placed = [
        ((i + 0.5) / len(group), g, item)
        for g, group in enumerate(groups)
        for i, item in enumerate(group)
    ]
    return [item for *_, item in sorted(placed, key=lambda p: p[:2])]


def running_order(ids: list[str]) -> list[str]:
    """The runs in the order they entered Running (their Running state's timestamp)."""

    async def read() -> list[str]:
        entered = []
        async with get_client() as client:
            for run_id in ids:
                for state in await client.read_flow_run_states(uuid.UUID(run_id)):
                    if state.type == StateType.RUNNING:
                        entered.append((state.timestamp, run_id))
        return [run_id for _, run_id in sorted(entered)]

    return run_coro_as_sync(read())


@pytest.mark.timeout(1200)  # 100 runs took 6 min at load 8-12 on 2 cores, see below
def test_three_workers_share_a_burst_without_twice_reorder_or_overrun(
    sdk: PipeDeploy, pool: str, tmp_path: Path
) -> None:
    """Fault: three workers compete for the runs of one pool under a burst of executions.
    Before: a parallel run executed twice, in two pods of two workers (once, with 300 runs); the
    cause found: a worker's periodic look for runs left Pending by dead workers re-queued any run
    Pending longer than `pending_recovery_s`, a live worker's too (reproduced and fixed in
    `test_runs_slow_to_start_in_a_live_worker_are_not_taken_by_another`). Held before: the queue
    kept FIFO order and ran one at a time across the workers, no parallel pod ran more than its
    parallelism, and the RAM reserved never went above the pool's cap.

    Cost, on this 2-core machine with nothing else running: 300 runs created in 41 s (116 s
    before the creates retried a 503 within milliseconds: Prefect's client waits about 2 s on
    each), all final 177 s after the workers started, 237 s for the whole test. (Earlier, shared
    with other test sessions at load 8-12: 300 runs 506 s, 100 runs 349-399 s.)"""
    marks = tmp_path / "marks"
    marks.mkdir()
    common = {"mode": "low_latency", "ram_request": f"{POD_MIB}MiB", "max_retries": 0}
    names = {
        "queue": deploy(sdk, "mark", **common),
        PARALLEL: deploy(
            sdk,
            "mark",
            **common,
            enable_parallel_executions=True,
            max_parallel_executions_per_pod=PARALLELISM,
        ),
        "elastic-small": deploy(sdk, "mark", ram_request=f"{ELASTIC_MIB[0]}MiB", max_retries=0),
        "elastic-large": deploy(sdk, "mark", ram_request=f"{ELASTIC_MIB[1]}MiB", max_retries=0),
    }

    def runs(kind: str, count: int, sleep_s: float) -> list[dict]:
        return [
            {"marker": f"{kind}-{i:03d}", "marks": str(marks), "sleep_s": sleep_s}
            for i in range(count)
        ]

    ids = {kind: uuid.UUID(sdk.get_deployment(name)["id"]) for kind, name in names.items()}
    half = ELASTIC_RUNS // 2
    lane = interleaved(  # each kind spread over the burst; the queue's runs in order
        [(ids["queue"], POD_MIB, p) for p in runs("queue", QUEUE_RUNS, 0.0)],
        [(ids[PARALLEL], POD_MIB, p) for p in runs(PARALLEL, PARALLEL_RUNS, 0.0)],
        [(ids["elastic-small"], ELASTIC_MIB[0], p) for p in runs("elastic-small", half, 0.0)],
        [(ids["elastic-large"], ELASTIC_MIB[1], p) for p in runs("elastic-large", half, 0.0)],
    )
    burst = create_burst(lane)
    started, started_at = time.monotonic(), time.time()
    workers = start_workers(pool, tmp_path)
    try:
        workers_up_s = time.monotonic() - started
        with Sampler(workers, sdk) as sampler:
            eventually(
                lambda: read_ledger(pool),
                660,
                2.0,
                until=lambda ledger: not ledger.unsettled,
                what=f"all {BURST_RUNS} executions final",
            )
            final_in_s = time.monotonic() - started
    finally:
        for worker in workers:
            worker.stop()

    # each run executed once: one attempt file per marker, run_count 1, Completed
    done = attempts(marks)
    per_marker = Counter(a.marker for a in done)
    assert sorted(per_marker) == sorted(p["marker"] for _, _, p in lane)
    twice = [m for m, n in per_marker.items() if n != 1]
    assert twice == [], explain_twice(burst, done, twice, tmp_path)
    ledger = check_ledger(pool, max_attempts=1)
    assert ledger.by_type == {"COMPLETED": BURST_RUNS}, ledger.summary()
    assert {r.run_count for r in ledger.runs} == {1}

    # the queue: FIFO (Running in creation order) and one at a time across the three workers
    queue_ids = burst.ids[str(ids["queue"])]
    assert running_order(queue_ids) == queue_ids
    queue_attempts = [a for a in done if a.marker.startswith("queue-")]
    assert most_at_once([(a.started, a.ended) for a in queue_attempts]) == 1

    # the parallel pods: never more than PARALLELISM at once in one pod
    by_pod: dict[int, list[tuple[float, float]]] = {}
    for a in done:
        if a.marker.startswith(f"{PARALLEL}-"):
            by_pod.setdefault(a.pid, []).append((a.started, a.ended))
    peak_per_pod = {pid: most_at_once(spans) for pid, spans in by_pod.items()}
    assert max(peak_per_pod.values()) <= PARALLELISM, peak_per_pod

    # RAM: what the live pods and elastic processes reserve never exceeded the pool's cap
    pod_mib = {str(ids[kind]): POD_MIB for kind in ("queue", PARALLEL)}

    def reserved(sample: frozenset[tuple[str, str, int]]) -> int:
        return sum(
            pod_mib[ident] if kind == "pod" else burst.mib_of_run[ident]
            for kind, ident, _ in sample
        )

    reserved_peak = max(map(reserved, sampler.processes))
    elastic_peak = max(sum(kind == "elastic" for kind, _, _ in s) for s in sampler.processes)
    assert reserved_peak <= CAP_MIB, reserved_peak
    assert max(sampler.held_mib) <= CAP_MIB, max(sampler.held_mib)

    spans = {}
    for kind in names:
        of_kind = [a for a in done if a.marker.rsplit("-", 1)[0] == kind]
        spans[kind] = (
            f"{len(of_kind)} from {min(a.started for a in of_kind) - started_at:.1f}"
            f" to {max(a.ended for a in of_kind) - started_at:.1f} s"
        )
    print(f"\nexecutions by kind, seconds after the workers were started: {spans}")
    per_worker = Counter(a.worker_pid for a in done)
    worker_pids = {w.popen.pid for w in workers}
    print(
        f"\n{BURST_RUNS} executions created in {burst.created_in_s:.1f} s; 3 workers started in"
        f" {workers_up_s:.1f} s; all final {final_in_s:.1f} s after the workers were started;"
        f" per worker {[per_worker[w.popen.pid] for w in workers]}"
        f" (other parents: {[p for p in per_worker if p not in worker_pids]});"
        f" parallel peak per pod {sorted(peak_per_pod.values())};"
        f" RAM reserved by processes peak {reserved_peak} MiB, cap held peak"
        f" {max(sampler.held_mib)} MiB of {CAP_MIB} MiB; elastic processes at once peak"
        f" {elastic_peak}; {len(sampler.processes)} samples"
    )


@pytest.mark.timeout(600)
def test_runs_slow_to_start_in_a_live_worker_are_not_taken_by_another(
    sdk: PipeDeploy, pool: str, tmp_path: Path
) -> None:
    """Fault: runs wait in Pending, claimed by a live worker, longer than `pending_recovery_s`
    (1 s here, which an elastic execution's process takes to start; in the 300-run burst, with
    the default 60 s, a pod's Running write retrying the server's 503s). Before: the other
    worker's periodic look for runs a dead worker left Pending re-queued them, a worker claimed
    them again and they executed twice (in the burst, a parallel run in two pods of two
    workers). Now a claim names its worker, and only the claims of a gone worker are
    re-queued."""
    marks = tmp_path / "marks"
    marks.mkdir()
    name = deploy(sdk, "mark", max_retries=0, ram_request="128MiB")
    env = {"PREFECT_INTEGRATIONS_PIPEDEPLOY_PENDING_RECOVERY_S": "1"}
    with ThreadPoolExecutor(2) as starting:
        futures = [starting.submit(start_worker, pool, tmp_path, env=env) for _ in range(2)]
        workers = [f.result() for f in futures]
    try:
        markers = [f"slow-{i}" for i in range(SLOW_RUNS)]
        for marker in markers:
            sdk.run_deployment(
                name, {"marker": marker, "marks": str(marks)}, wait_for_completion=False
            )
        eventually(
            lambda: read_ledger(pool),
            180,
            1.0,
            until=lambda ledger: len(ledger.runs) == SLOW_RUNS and not ledger.unsettled,
            what="every execution final",
        )
    finally:
        for worker in workers:
            worker.stop()
    per_marker = Counter(a.marker for a in attempts(marks))
    assert per_marker == dict.fromkeys(markers, 1)
    ledger = check_ledger(pool, max_attempts=1)
    assert ledger.by_type == {"COMPLETED": SLOW_RUNS}, ledger.summary()
