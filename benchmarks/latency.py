"""Benchmark: execution round trip, parallel-pod throughput and API calls per execution.

For: the headline performance figures of prefect-pipedeploy, each next to Prefect's own way of
doing the same work measured in the same run, against one Prefect server (SQLite, or PostgreSQL
with `--database postgresql`; temporary home, 127.0.0.1) this script starts and stops itself. See benchmarks/README.md for what each
figure means. Not for: timed tests (the test suite never asserts on speed).

    .venv/bin/python benchmarks/latency.py                # about 3.5 minutes on 2 cores
    .venv/bin/python benchmarks/latency.py --runs 50 --slow-runs 10 --skip serve
    .venv/bin/python benchmarks/latency.py --database postgresql    # every section on PostgreSQL

Sections:
1. round trip of one trivial execution (create a flow run from a deployment -> it reaches a
   final state -> read it back): pipedeploy low_latency (`def`, `async def`), elastic; Prefect's
   process worker (plain, and with the `python -m prefect.engine` command) and `flow.serve()`;
   and what one create call costs by the deployment's kind of work pool.
2. throughput of a parallel low-latency pod (`async def` sleeping 0.5 s, 6 at once) against the
   process worker.
3. Prefect API calls per low-latency execution, by endpoint and by caller (worker, pod, the
   triggering client), counted by a reverse proxy in front of the server.
4. logs complete at final (`benchmarks/logs_at_final.py`): the round trip of pipelines printing
   14 lines with the run's logs stored before its final state (the default) and without (as
   before), runs alternating in the same benchmark, and whether every line was stored when the
   run was seen final.
5. the endpoint path (`benchmarks/endpoint_path.py`): two gateways, one handing calls straight
   to the pod (direct) and one through the worker (worker path), and the SDK against the
   bookkeeping floor (two writes: a run created Running, then set Completed); through each
   gateway: back-to-back calls, accepted calls per second and a parallel pod under 16
   concurrent callers.
6. the docker runtime (`benchmarks/docker_runtime.py`): low latency and elastic in containers
   beside the same in processes, and Prefect's Docker worker running the pipeline in a
   container of the same image (needs a Docker engine; `--skip docker` leaves it out).
Results: a Markdown report on stdout, and benchmarks/results/latency-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
FLOWS_DIR = ROOT / "benchmarks" / "flows"
FLOWS_FILE = FLOWS_DIR / "bench_flows.py"
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

# Settings must be in place before Prefect is imported anywhere in this process.
HOME = Path(tempfile.mkdtemp(prefix="pipedeploy-bench-"))
#: Set by `finish` with --keep; otherwise HOME goes at exit, also after --help or a failed import.
KEEP: list[bool] = []
atexit.register(lambda: KEEP or shutil.rmtree(HOME, ignore_errors=True))
os.environ["PREFECT_HOME"] = str(HOME / "client")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME"] = str(HOME / "pipedeploy")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

import prefect  # noqa: E402
import psutil  # noqa: E402
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.client.schemas.objects import StateType  # noqa: E402
from prefect.events.clients import PrefectEventSubscriber  # noqa: E402
from prefect.events.filters import (  # noqa: E402
    EventFilter,
    EventNameFilter,
    EventResourceFilter,
)
from prefect.events.schemas.events import ResourceSpecification  # noqa: E402
from prefect.settings import PREFECT_API_URL, temporary_settings  # noqa: E402

from benchmarks.apiproxy import Call, CountingProxy, calls_as_dicts  # noqa: E402
from benchmarks.docker_runtime import docker_section, report_docker  # noqa: E402
from benchmarks.endpoint_path import (  # noqa: E402
    endpoint_path_section,
    report_endpoint_path,
)
from benchmarks.logs_at_final import (  # noqa: E402
    logs_at_final_section,
    report_logs_at_final,
)
from benchmarks.stats import percentile  # noqa: E402
from prefect_pipedeploy import PipeDeploy  # noqa: E402
from prefect_pipedeploy.gateway.waiting import FINAL_STATES  # noqa: E402
from prefect_pipedeploy.stack import (  # noqa: E402
    ChildProcess,
    free_port,
    start_child,
    start_prefect_server_on,
)

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PD_POOL = "bench-pipedeploy"
COUNT_POOL = "bench-pipedeploy-count"
PROCESS_POOL = "bench-process"
SET_WORKDIR = {"prefect.deployments.steps.set_working_directory": {"directory": str(FLOWS_DIR)}}


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


# Responses the benchmark's own client got with a retryable status (503 "database is locked"
# from SQLite, mostly): Prefect's client retries them after 2 s, 4 s, ... of back-off.
RETRIED: Counter[str] = Counter()


async def _count_retryable(response: Any) -> None:
    if response.status_code in (408, 409, 429, 502, 503):
        from benchmarks.apiproxy import path_template

        RETRIED[
            f"{response.request.method} {path_template(response.request.url.path)} -> {response.status_code}"
        ] += 1


def bench_client(api_url: str) -> PrefectClient:
    """A Prefect client that counts the retryable responses it gets (see RETRIED)."""
    return PrefectClient(api_url, httpx_settings={"event_hooks": {"response": [_count_retryable]}})


# ---------------------------------------------------------------------------------------------
# Watching runs reach a final state
# ---------------------------------------------------------------------------------------------


class RunWatcher:
    """Flow-run state events from one websocket subscription (no polling on the hot path).

    Keeps, per flow run, the moment (perf_counter) each final state type was first seen. Final
    states only, as the gateway's watcher (`gateway.waiting.FINAL_STATES`): the server sends
    each event to every subscriber it matches, and the benchmark's own watcher should not cost
    the server under measurement 3 pushes more per execution (Scheduled, Pending, Running)
    than a deployment without it pays.
    """

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.seen: dict[UUID, dict[str, float]] = defaultdict(dict)
        self._changed = asyncio.Condition()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def start(self, timeout_s: float = 30) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._connected.wait(), timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        event_filter = EventFilter(
            event=EventNameFilter(prefix=["prefect.flow-run."]),
            resource=EventResourceFilter(labels=ResourceSpecification(FINAL_STATES)),
        )
        while True:
            try:
                async with PrefectEventSubscriber(
                    api_url=self.api_url, filter=event_filter, reconnection_attempts=5
                ) as subscriber:
                    self._connected.set()
                    async for event in subscriber:
                        await self._on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reconnects += 1
                say(f"  (event subscription ended: {exc}; reconnecting)")
                await asyncio.sleep(0.5)

    async def _on_event(self, event: Any) -> None:
        now = time.perf_counter()
        resource_id = event.resource.id
        if not resource_id.startswith("prefect.flow-run."):
            return
        try:
            run_id = UUID(resource_id.rsplit(".", 1)[1])
        except ValueError:
            return
        state = (event.payload or {}).get("validated_state") or {}
        state_type = state.get("type") or event.event.rsplit(".", 1)[1].upper()
        self.seen[run_id].setdefault(state_type, now)
        async with self._changed:
            self._changed.notify_all()

    def final_seen(self, run_id: UUID) -> float | None:
        seen = self.seen.get(run_id, {})
        moments = [t for state, t in seen.items() if state in FINAL]
        return min(moments) if moments else None

    async def wait_final(self, run_id: UUID, timeout_s: float) -> float:
        """The perf_counter moment the run's final state event arrived."""
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                while (moment := self.final_seen(run_id)) is None:
                    await self._changed.wait()
        return moment


async def read_final(client: PrefectClient, run_id: UUID, within_s: float = 2.0) -> Any:
    """The run, read once its final state is visible: Prefect's server sends a state's event
    from inside the transaction that writes the state, so a read right after the final state's
    event can still show the state before (seen on PostgreSQL: Running). Read again every 10 ms
    for up to `within_s`; then the run as read."""
    deadline = time.perf_counter() + within_s
    run = await client.read_flow_run(run_id)
    while (run.state is None or run.state.type.value not in FINAL) and (
        time.perf_counter() < deadline
    ):
        await asyncio.sleep(0.01)
        run = await client.read_flow_run(run_id)
    return run


async def poll_final(
    client: PrefectClient, run_id: UUID, timeout_s: float, every_s: float
) -> float:
    """Poll the run every `every_s` until it is final (the fallback to events)."""
    async with asyncio.timeout(timeout_s):
        while True:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.type.value in FINAL:
                return time.perf_counter()
            await asyncio.sleep(every_s)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every section needs: the API, a client, the run watcher and the options."""

    api_url: str
    client: PrefectClient
    watcher: RunWatcher
    args: argparse.Namespace
    children: list[ChildProcess]
    results: dict[str, Any]

    async def round_trip(
        self, deployment_id: UUID, parameters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Create a run, wait until it is final, read it back; timings in seconds."""
        retried_before = sum(RETRIED.values())
        wall0 = time.time()
        t0 = time.perf_counter()
        created = await self.client.create_flow_run_from_deployment(
            deployment_id, parameters=parameters or {}
        )
        t_created = time.perf_counter()
        if self.args.watch == "events":
            t_final = await self.watcher.wait_final(created.id, self.args.run_timeout)
        else:
            t_final = await poll_final(self.client, created.id, self.args.run_timeout, 0.02)
        run = await read_final(self.client, created.id)
        t1 = time.perf_counter()
        state = run.state.type.value if run.state else "UNKNOWN"
        return {
            "id": str(created.id),
            "state": state,
            "message": run.state.message if run.state and state != "COMPLETED" else None,
            "round_trip_s": t1 - t0,
            "create_s": t_created - t0,
            "final_seen_s": t_final - t0,
            "retried_requests": sum(RETRIED.values()) - retried_before,
            "pickup_s": run.start_time.timestamp() - wall0 if run.start_time else None,
            "run_s": (run.end_time - run.start_time).total_seconds()
            if run.start_time and run.end_time
            else None,
        }

    async def measure_path(
        self, key: str, label: str, deployment_id: UUID, runs: int, warmup: int = 1
    ) -> dict[str, Any]:
        say(f"- {label}: {warmup} warm-up + {runs} runs")
        samples: list[dict[str, Any]] = []
        failures: list[dict[str, Any]] = []
        for i in range(warmup + runs):
            await asyncio.sleep(self.args.gap_s)  # each request finds the system at rest
            try:
                sample = await self.round_trip(deployment_id)
            except TimeoutError:
                sample = {"state": "TIMEOUT", "message": f"not final in {self.args.run_timeout} s"}
            if sample["state"] != "COMPLETED":
                failures.append(sample)
                say(f"  run {i}: {sample['state']}: {sample.get('message')}")
                if len(failures) >= 2:
                    say("  two runs did not complete: giving up on this path")
                    break
                continue
            if i >= warmup:
                samples.append(sample)
        result = summarise(label, samples, failures)
        self.results["latency"][key] = result
        if samples:
            say(
                f"  p50 {fmt_s(result['p50_s'])}  p99 {fmt_s(result['p99_s'])}"
                f"  (pickup p50 {fmt_s(result['pickup_p50_s'])})"
            )
        return result

    def start(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> ChildProcess:
        child = start_child(name, args, HOME / "logs" / f"{name}.log", env=env, cwd=cwd)
        self.children.append(child)
        return child

    def stop(self, child: ChildProcess) -> None:
        started = time.monotonic()
        stop_tree(child)
        say(f"  stopped {child.name} in {time.monotonic() - started:.1f} s")
        with contextlib.suppress(ValueError):
            self.children.remove(child)


def summarise(
    label: str, samples: list[dict[str, Any]], failures: list[dict[str, Any]]
) -> dict[str, Any]:
    trips = [s["round_trip_s"] for s in samples]
    pickups = [s["pickup_s"] for s in samples if s.get("pickup_s") is not None]
    result: dict[str, Any] = {
        "label": label,
        "runs": len(samples),
        "failures": failures,
        "samples": samples,
    }
    if trips:
        result.update(
            p50_s=statistics.median(trips),
            p99_s=percentile(trips, 99),
            mean_s=statistics.fmean(trips),
            min_s=min(trips),
            pickup_p50_s=statistics.median(pickups) if pickups else None,
            run_p50_s=statistics.median(
                [s["run_s"] for s in samples if s.get("run_s") is not None] or [0]
            ),
            create_p50_s=statistics.median([s["create_s"] for s in samples]),
            runs_with_retried_requests=sum(1 for s in samples if s.get("retried_requests")),
        )
    return result


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


# ---------------------------------------------------------------------------------------------
# Starting things
# ---------------------------------------------------------------------------------------------


def wait_for_log(child: ChildProcess, needle: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in child.log_path.read_text(errors="replace"):
            return
        if not child.alive():
            break
        time.sleep(0.2)
    raise RuntimeError(
        f"{child.name} did not say {needle!r}; its log ends with:\n{child.log_tail()}"
    )


def child_env(api_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": api_url, **extra}


def start_pipedeploy_worker(bench: Bench, pool: str, api_url: str, name: str) -> ChildProcess:
    child = bench.start(
        name,
        [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", pool],
        child_env(api_url),
    )
    wait_for_log(child, "started!")
    return child


async def wait_until_up(pd: PipeDeploy, names: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        for name in list(pending):
            deployment = await pd.aget_deployment(name)
            if deployment["status"] == "up":
                pending.discard(name)
            elif deployment["status"] == "creation_failed":
                raise RuntimeError(f"pod of {name} failed: {deployment['status_message']}")
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"pods not up after {timeout_s:.0f} s: {sorted(pending)}")
        await asyncio.sleep(0.3)


async def deployment_id_of(pd: PipeDeploy, name: str) -> UUID:
    return UUID((await pd.aget_deployment(name))["id"])


# ---------------------------------------------------------------------------------------------
# Section 1 + 2, pipedeploy side
# ---------------------------------------------------------------------------------------------


async def pipedeploy_section(bench: Bench) -> None:
    args = bench.args
    say("\n## pipedeploy: low_latency and elastic")
    pd = PipeDeploy(api_url=bench.api_url, work_pool_name=PD_POOL)
    common: dict[str, Any] = {"execution_rule": "endpoint"}
    wanted = {
        "ll-sync": ("bench_noop_sync", {"mode": "low_latency"}),
        "ll-async": ("bench_noop_async", {"mode": "low_latency"}),
        "elastic-sync": ("bench_noop_sync", {"mode": "elastic"}),
        "ll-parallel": (
            "bench_sleep_async",
            {
                "mode": "low_latency",
                "enable_parallel_executions": True,
                "max_parallel_executions_per_pod": args.parallel,
            },
        ),
    }
    ids: dict[str, UUID] = {}
    for name, (function, options) in wanted.items():
        if name == "ll-parallel" and "throughput" in args.skip:
            continue
        await pd.acreate_deployment(
            f"{FLOWS_FILE}:{function}", f"bench-{name}", **common, **options
        )
        ids[name] = await deployment_id_of(pd, f"bench-{name}")
    started = time.monotonic()
    worker = start_pipedeploy_worker(bench, PD_POOL, bench.api_url, "pipedeploy-worker")
    try:
        await wait_until_up(pd, [f"bench-{n}" for n in ids if n.startswith("ll-")])
        say(
            f"  worker started and {sum(n.startswith('ll-') for n in ids)} pods up in {time.monotonic() - started:.1f} s"
        )
        await bench.measure_path("a", "pipedeploy low_latency, def flow", ids["ll-sync"], args.runs)
        await bench.measure_path(
            "b", "pipedeploy low_latency, async def flow", ids["ll-async"], args.runs
        )
        if "elastic" not in args.skip:
            await bench.measure_path(
                "c",
                "pipedeploy elastic (cold start), def flow",
                ids["elastic-sync"],
                args.slow_runs,
            )
        if "ll-parallel" in ids:
            say(
                f"- throughput: {args.throughput_runs} runs of a {args.sleep_s} s async flow, parallel pod (max {args.parallel})"
            )
            await bench.round_trip(ids["ll-parallel"], {"sleep_s": 0.0})  # warm-up
            bench.results["throughput"]["pipedeploy"] = await throughput(
                bench,
                ids["ll-parallel"],
                args.throughput_runs,
                f"pipedeploy low_latency, parallel pod (max {args.parallel})",
            )
            if not args.no_fast_retry:
                say("- the same, creating with a 20 ms retry on 503 instead of Prefect's ~2 s")
                await asyncio.sleep(1)
                bench.results["throughput"]["pipedeploy_fast_retry"] = await throughput(
                    bench,
                    ids["ll-parallel"],
                    args.throughput_runs,
                    f"pipedeploy low_latency, parallel pod (max {args.parallel}),"
                    " creates retried after 20 ms on 503",
                    fast_retry=True,
                )
    finally:
        bench.stop(worker)


async def create_with_fast_retry(
    api_url: str, deployment_id: UUID, parameters: dict[str, Any]
) -> tuple[UUID, int]:
    """Create a run through plain httpx, retrying a 503 after 20 ms (Prefect's client waits
    about 2 s); returns the run id and how many 503s it got. A 503 'database is locked' means
    the server's transaction rolled back: no run was created, so retrying is safe."""
    import httpx

    retried = 0
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        while True:
            response = await http.post(
                f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters}
            )
            if response.status_code != 503 or retried >= 500:
                response.raise_for_status()
                return UUID(response.json()["id"]), retried
            retried += 1
            await asyncio.sleep(0.02)


async def throughput(
    bench: Bench, deployment_id: UUID, runs: int, label: str, fast_retry: bool = False
) -> dict[str, Any]:
    """Create `runs` runs back to back (as fast as the server takes them), wait for all.

    With `fast_retry`, creates go through `create_with_fast_retry` instead of Prefect's client.
    """
    parameters = {"sleep_s": bench.args.sleep_s}
    fast_retries = 0
    retried_before = sum(RETRIED.values())
    wall0 = time.time()
    t0 = time.perf_counter()
    ids: list[UUID] = []
    create_s: list[float] = []
    for _ in range(runs):
        c0 = time.perf_counter()
        if fast_retry:
            run_id, retried = await create_with_fast_retry(bench.api_url, deployment_id, parameters)
            fast_retries += retried
        else:
            run_id = (
                await bench.client.create_flow_run_from_deployment(
                    deployment_id, parameters=parameters
                )
            ).id
        create_s.append(time.perf_counter() - c0)
        ids.append(run_id)
    submitted_s = time.perf_counter() - t0
    timeout = bench.args.run_timeout + runs * 2
    finals = await asyncio.gather(
        *(bench.watcher.wait_final(run_id, timeout) for run_id in ids), return_exceptions=True
    )
    done = [t for t in finals if isinstance(t, float)]
    wall_s = (max(done) if done else time.perf_counter()) - t0
    read = await bench.client.read_flow_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
    )
    completed = [r for r in read if r.state is not None and r.state.type == StateType.COMPLETED]
    intervals = [
        (r.start_time.timestamp() - wall0, r.end_time.timestamp() - wall0)
        for r in completed
        if r.start_time and r.end_time
    ]
    busy_s = sum(end - start for start, end in intervals)
    result = {
        "label": label,
        "runs": runs,
        "completed": len(completed),
        "not_completed": {
            str(r.id): r.state.type.value if r.state else None for r in read if r not in completed
        },
        "sleep_s": bench.args.sleep_s,
        "submit_s": submitted_s,
        "create_p50_s": statistics.median(create_s),
        "create_max_s": max(create_s),
        "retried_requests": sum(RETRIED.values()) - retried_before + fast_retries,
        "retry_after": "20 ms" if fast_retry else "about 2 s (Prefect's client)",
        "wall_s": wall_s,
        "executions_per_s": len(completed) / wall_s if wall_s > 0 else None,
        "avg_in_flight": busy_s / wall_s if wall_s > 0 else None,
        "peak_in_flight": peak_overlap(intervals),
        "run_p50_s": statistics.median([e - s for s, e in intervals]) if intervals else None,
        "intervals": intervals,
    }
    say(
        f"  {result['completed']}/{runs} completed in {wall_s:.2f} s: "
        f"{result['executions_per_s']:.2f} executions/s, average in flight "
        f"{result['avg_in_flight']:.2f}, peak {result['peak_in_flight']}"
        f" (creates took {submitted_s:.2f} s, slowest {result['create_max_s'] * 1000:.0f} ms,"
        f" {result['retried_requests']} retried responses)"
    )
    return result


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


# ---------------------------------------------------------------------------------------------
# Section 1 + 2, Prefect's own ways
# ---------------------------------------------------------------------------------------------


async def create_cost_section(bench: Bench) -> None:
    """What one create call costs by the kind of pool of the deployment (no worker running).

    The server checks a run's job variables against its pool's template on every create, so
    the template's size is on every execution's critical path.
    """
    from prefect.workers.process import ProcessWorker

    from prefect_pipedeploy.worker import PipeDeployWorker

    say("\n## create_flow_run cost by pool type (no worker running)")
    client = bench.client
    templates = {
        "pipedeploy": PipeDeployWorker.get_default_base_job_template(),
        "process": ProcessWorker.get_default_base_job_template(),
    }
    flow_id = await client.create_flow_from_name("bench-create-cost")
    deployments = {
        "no work pool": await client.create_deployment(flow_id=flow_id, name="cost-none")
    }
    for kind, template in templates.items():
        pool = f"bench-create-cost-{kind}"
        await client.create_work_pool(
            WorkPoolCreate(name=pool, type=kind, base_job_template=template)
        )
        deployments[
            f"{kind} pool ({len(json.dumps(template['variables'])) / 1024:.1f} KiB of variables schema)"
        ] = await client.create_deployment(
            flow_id=flow_id, name=f"cost-{kind}", work_pool_name=pool
        )
    rows = {}
    created: list[UUID] = []
    for label, deployment_id in deployments.items():
        durations = []
        for _ in range(bench.args.create_runs):
            t0 = time.perf_counter()
            run = await client.create_flow_run_from_deployment(deployment_id)
            durations.append(time.perf_counter() - t0)
            created.append(run.id)
        rows[label] = {
            "p50_s": statistics.median(durations),
            "min_s": min(durations),
            "max_s": max(durations),
            "runs": len(durations),
        }
        say(f"- {label}: p50 {fmt_s(rows[label]['p50_s'])}, min {fmt_s(rows[label]['min_s'])}")
    bench.results["create_cost"] = rows
    for run_id in created:  # nobody serves these pools: leave nothing Scheduled behind
        with contextlib.suppress(Exception):
            await client.delete_flow_run(run_id)


async def process_worker_section(bench: Bench) -> None:
    from prefect.workers.process import ProcessWorker

    args = bench.args
    say("\n## Prefect process worker (PREFECT_WORKER_QUERY_SECONDS=1)")
    client = bench.client
    await client.create_work_pool(
        WorkPoolCreate(
            name=PROCESS_POOL,
            type="process",
            base_job_template=ProcessWorker.get_default_base_job_template(),
        )
    )
    engine_command = f"{sys.executable} -m prefect.engine"

    async def deploy(name: str, function: str, job_variables: dict[str, Any]) -> UUID:
        flow_id = await client.create_flow_from_name(function.replace("_", "-"))
        return await client.create_deployment(
            flow_id=flow_id,
            name=name,
            work_pool_name=PROCESS_POOL,
            entrypoint=f"{FLOWS_FILE.name}:{function}",
            path=str(FLOWS_DIR),
            pull_steps=[SET_WORKDIR],
            job_variables=job_variables,
            enforce_parameter_schema=False,
        )

    plain = await deploy("bench-process-sync", "bench_noop_sync", {})
    engine = await deploy(
        "bench-process-engine-sync", "bench_noop_sync", {"command": engine_command}
    )
    sleeper_plain = await deploy("bench-process-sleep", "bench_sleep_async", {})
    sleeper_engine = await deploy(
        "bench-process-engine-sleep", "bench_sleep_async", {"command": engine_command}
    )
    worker = bench.start(
        "process-worker",
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--type",
            "process",
            "--pool",
            PROCESS_POOL,
        ],
        child_env(bench.api_url, PREFECT_WORKER_QUERY_SECONDS="1"),
    )
    try:
        wait_for_log(worker, "started!")
        await bench.measure_path("d", "Prefect process worker, 1 s poll", plain, args.slow_runs)
        engine_result = await bench.measure_path(
            "d2",
            "Prefect process worker, 1 s poll, command: python -m prefect.engine",
            engine,
            args.slow_runs,
        )
        if "throughput" not in args.skip:
            engine_ok = engine_result.get("runs", 0) > 0 and not engine_result["failures"]
            deployment, how = (
                (sleeper_engine, "command: python -m prefect.engine")
                if engine_ok
                else (sleeper_plain, "default command")
            )
            runs = args.process_throughput_runs
            say(
                f"- throughput: {runs} runs of a {args.sleep_s} s async flow, process worker ({how})"
            )
            bench.results["throughput"]["process_worker"] = await throughput(
                bench, deployment, runs, f"Prefect process worker, 1 s poll, {how}"
            )
    finally:
        bench.stop(worker)


async def serve_section(bench: Bench) -> None:
    say("\n## flow.serve() (PREFECT_RUNNER_POLL_FREQUENCY=1)")
    name = "bench-serve-sync"
    served = bench.start(
        "flow-serve",
        [sys.executable, str(FLOWS_FILE), "serve", name],
        child_env(bench.api_url, PREFECT_RUNNER_POLL_FREQUENCY="1"),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 90
        deployment = None
        while deployment is None:
            if not served.alive():
                raise RuntimeError(f"flow.serve() exited; its log ends with:\n{served.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"flow.serve() did not register {name} within 90 s")
            with contextlib.suppress(Exception):
                deployment = await bench.client.read_deployment_by_name(f"bench-noop-sync/{name}")
            await asyncio.sleep(0.3)
        await bench.measure_path(
            "e", "Prefect flow.serve(), 1 s poll", deployment.id, bench.args.slow_runs
        )
    finally:
        bench.stop(served)


# ---------------------------------------------------------------------------------------------
# Section 3: API calls per low-latency execution
# ---------------------------------------------------------------------------------------------


async def api_count_section(bench: Bench) -> None:
    args = bench.args
    say("\n## API calls per low-latency execution (through a counting proxy)")
    upstream = bench.api_url.removesuffix("/api")
    proxy = CountingProxy(upstream, port=free_port())
    proxy.start()
    watcher = RunWatcher(proxy.url("client"))
    worker = None
    try:
        pd = PipeDeploy(api_url=bench.api_url, work_pool_name=COUNT_POOL)
        ids = {}
        kinds = [("sync", "bench_noop_sync")]
        if args.count_async:
            kinds.append(("async", "bench_noop_async"))
        for kind, function in kinds:
            name = f"bench-count-{kind}"
            await pd.acreate_deployment(
                f"{FLOWS_FILE}:{function}", name, execution_rule="endpoint", mode="low_latency"
            )
            ids[kind] = await deployment_id_of(pd, name)
            # the pod's environment: the worker's plus the deployment's `env` job variable
            deployment = await bench.client.read_deployment(ids[kind])
            job_variables = {
                **deployment.job_variables,
                "env": {"PREFECT_API_URL": proxy.url("pod")},
            }
            await bench.client.update_deployment(
                ids[kind], DeploymentUpdate(job_variables=job_variables)
            )
        worker = start_pipedeploy_worker(
            bench, COUNT_POOL, proxy.url("worker"), "pipedeploy-worker-counted"
        )
        await wait_until_up(pd, list(f"bench-count-{k}" for k in ids))
        await watcher.start()
        async with bench_client(proxy.url("client")) as client:
            counted = Bench(
                proxy.url("client"), client, watcher, args, bench.children, bench.results
            )
            for deployment_id in ids.values():
                await counted.round_trip(deployment_id)  # warm-up
            await asyncio.sleep(2.5)  # let the warm-ups' log batches go out
            idle_start = time.monotonic()
            await asyncio.sleep(args.idle_s)
            idle = (idle_start, time.monotonic())
            windows = {}
            traces = {}
            for kind, deployment_id in ids.items():
                start = time.monotonic()
                last: tuple[float, float] = (0.0, 0.0)
                failed = 0
                for _ in range(args.count_runs):
                    await asyncio.sleep(args.gap_s)
                    t0 = time.monotonic()
                    sample = await counted.round_trip(deployment_id)
                    failed += sample["state"] != "COMPLETED"
                    last = (t0, t0 + sample["round_trip_s"])
                await asyncio.sleep(2.5)  # the pod's logs go out in batches every 2 s
                windows[kind] = (start, time.monotonic(), failed)
                traces[kind] = last
        calls = proxy.snapshot()
        bench.results["api_calls"] = analyse_calls(calls, idle, windows, traces, args.count_runs)
        bench.results["api_calls"]["raw_calls"] = calls_as_dicts(calls)
    finally:
        await watcher.stop()
        if worker is not None:
            bench.stop(worker)
        proxy.stop()


def analyse_calls(
    calls: list[Call],
    idle: tuple[float, float],
    windows: dict[str, tuple[float, float, int]],
    traces: dict[str, tuple[float, float]],
    runs: int,
) -> dict[str, Any]:
    """Calls per execution by (who, method, endpoint): the window's count minus the idle rate."""

    def key(call: Call) -> tuple[str, str, str]:
        if call.method == "WS>" and call.detail:
            return (call.role, "WS>", f"{call.endpoint} [{call.detail}]")
        if call.status >= 400:
            return (call.role, call.method, f"{call.endpoint} -> {call.status}")
        return (call.role, call.method, call.endpoint)

    def within(window: tuple[float, float]) -> list[Call]:
        return [c for c in calls if window[0] <= c.started < window[1]]

    idle_calls = within(idle)
    idle_s = idle[1] - idle[0]
    idle_rate = {k: n / idle_s for k, n in Counter(map(key, idle_calls)).items()}
    result: dict[str, Any] = {
        "idle_window_s": idle_s,
        "idle_calls_per_s": {" ".join(k): rate for k, rate in sorted(idle_rate.items())},
        "per_execution": {},
        "traces": {},
    }
    for kind, (start, end, failed) in windows.items():
        in_window = within((start, end))
        counts = Counter(map(key, in_window))
        durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
        for call in in_window:
            durations[key(call)].append(call.duration_s)
        rows: list[dict[str, Any]] = []
        for k in sorted(set(counts) | set(idle_rate)):
            gross = counts.get(k, 0)
            background = idle_rate.get(k, 0.0) * (end - start)
            rows.append(
                {
                    "who": k[0],
                    "method": k[1],
                    "endpoint": k[2],
                    "per_execution": max(0.0, (gross - background) / runs),
                    "gross_in_window": gross,
                    "background_estimate": background,
                    "mean_ms": statistics.fmean(durations[k]) * 1000 if durations.get(k) else None,
                    "max_ms": max(durations[k]) * 1000 if durations.get(k) else None,
                }
            )
        rest = [r for r in rows if not r["method"].startswith("WS")]
        result["per_execution"][kind] = {
            "window_s": end - start,
            "runs": runs,
            "failed": failed,
            "rows": rows,
            "rest_per_execution": sum(r["per_execution"] for r in rest),
            "rest_per_execution_by_who": {
                who: sum(r["per_execution"] for r in rest if r["who"] == who)
                for who in sorted({r["who"] for r in rest})
            },
        }
        t0, t1 = traces[kind]
        result["traces"][kind] = [
            {
                "at_ms": (c.started - t0) * 1000,
                "duration_ms": c.duration_s * 1000,
                "who": c.role,
                "method": c.method,
                "endpoint": c.endpoint + (f" [{c.detail}]" if c.detail else ""),
                "status": c.status,
            }
            for c in sorted(calls, key=lambda c: c.started)
            if t0 <= c.started <= t1 + 0.05
        ]
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    meta = results["meta"]
    lines.append(f"# prefect-pipedeploy benchmark, {meta['started']}")
    lines.append("")
    lines.append(
        f"Machine: {meta['cpus']} CPUs, {meta['platform']}; Python {meta['python']}; "
        f"Prefect {meta['prefect']}; server: {meta['args']['database']} on 127.0.0.1; "
        "completion seen via "
        f"{meta['watch']}. Load average (1, 5, 15 min) before the benchmark started anything: "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average_at_start'])}; at the end: "
        f"{', '.join(f'{x:.1f}' for x in meta.get('load_average_at_end', ()))}."
    )
    if meta["load_average_at_start"][0] >= 1.0:
        lines.append(
            f"Other work was sharing the {meta['cpus']} CPUs when this run started (or had just "
            "ended): its figures are slower and noisier than on an idle machine."
        )
    latency = results["latency"]
    if latency:
        lines += [
            "",
            "## Round trip of one trivial execution (create -> final state -> read back)",
            "",
        ]
        references = [
            ("d", "process worker"),
            ("d2", "process worker + engine command"),
            ("e", "flow.serve"),
        ]
        references = [(k, name) for k, name in references if latency.get(k, {}).get("runs")]
        header = (
            "| path | runs | p50 | p99 | mean | create p50 | pickup p50 | runs with a 503 retry |"
        )
        rule = "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        for _, name in references:
            header += f" x faster than {name} (p50) |"
            rule += " ---: |"
        lines += [header, rule]
        for k in ("a", "b", "c", "d", "d2", "e"):
            row = latency.get(k)
            if row is None:
                continue
            if not row.get("runs"):
                reason = "; ".join(
                    f"{f['state']}: {f.get('message')}" for f in row.get("failures", [])
                ) or row.get("error", "no run completed")
                lines.append(
                    f"| ({k}) {row['label']} | 0 | failed: {reason} | | | | | |"
                    + " |" * len(references)
                )
                continue
            cells = [
                f"({k}) {row['label']}",
                str(row["runs"]),
                fmt_s(row["p50_s"]),
                fmt_s(row["p99_s"]),
                fmt_s(row["mean_s"]),
                fmt_s(row["create_p50_s"]),
                fmt_s(row["pickup_p50_s"]),
                str(row["runs_with_retried_requests"]),
            ]
            for ref, _ in references:
                if k in ("a", "b", "c"):
                    cells.append(f"{latency[ref]['p50_s'] / row['p50_s']:.1f}x")
                else:
                    cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "p99 is nearest-rank: with 100 runs or fewer it is the slowest run. Create: the create "
            "call as the client sees it (a 503 'database is locked' from SQLite makes Prefect's "
            "client retry after about 2 s). Pickup: from the create call to the run's Running "
            f"state. Each run starts {results['meta']['args']['gap_s']} s after the previous one ended."
        )
        for k, row in latency.items():
            if row.get("runs") and row.get("failures"):
                lines.append(
                    f"({k}) had {len(row['failures'])} failed run(s): {row['failures'][0].get('message')}"
                )
    lines += report_logs_at_final(results)
    lines += report_docker(results)
    create_cost = results.get("create_cost")
    if create_cost:
        lines += [
            "",
            "## What one create call costs, by the deployment's work pool (no worker running)",
            "",
        ]
        lines.append("| deployment | creates | p50 | min | max |")
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for label, row in create_cost.items():
            lines.append(
                f"| {label} | {row['runs']} | {fmt_s(row['p50_s'])} | {fmt_s(row['min_s'])} |"
                f" {fmt_s(row['max_s'])} |"
            )
        lines.append("")
        lines.append(
            "The server validates each new run's job variables against its pool's variables "
            "schema (and checks that schema itself), so a larger template costs on every create."
        )
    throughput_results = results["throughput"]
    if throughput_results:
        lines += ["", "## Throughput of a parallel pod", ""]
        lines.append(
            "| path | runs | completed | wall | executions/s | avg in flight | peak in flight |"
            " run p50 | creating all took | 503 retries |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in throughput_results.values():
            if "error" in row:
                lines.append(f"| {row['label']} | failed: {row['error']} | | | | | | | | |")
                continue
            lines.append(
                f"| {row['label']} | {row['runs']} | {row['completed']} | {row['wall_s']:.2f} s |"
                f" {row['executions_per_s']:.2f} | {row['avg_in_flight']:.2f} |"
                f" {row['peak_in_flight']} | {fmt_s(row['run_p50_s'])} | {row['submit_s']:.2f} s |"
                f" {row['retried_requests']} |"
            )
        for row in throughput_results.values():
            if row.get("retried_requests"):
                lines.append("")
                lines.append(
                    f"{row['label']}: {row['retried_requests']} create calls were answered 503 "
                    f"(SQLite 'database is locked') and retried after {row['retry_after']}; "
                    f"creating the {row['runs']} runs took {row['submit_s']:.1f} s of the "
                    f"{row['wall_s']:.1f} s wall."
                )
        pw_row = throughput_results.get("process_worker")
        for key, how in (
            ("pipedeploy", ""),
            ("pipedeploy_fast_retry", " (creates retried after 20 ms)"),
        ):
            pd_row = throughput_results.get(key)
            if (
                pd_row
                and pw_row
                and pd_row.get("executions_per_s")
                and pw_row.get("executions_per_s")
            ):
                ratio = pd_row["executions_per_s"] / pw_row["executions_per_s"]
                lines.append("")
                lines.append(
                    f"Ratio{how}: the parallel pod completes {ratio:.1f}x as many executions per "
                    f"second as the process worker ({pw_row['runs']} runs there: each is a new "
                    "Python process; pass --process-throughput-runs to change it)."
                )
        lines.append("")
        lines.append(
            "Each run is an `async def` flow sleeping "
            f"{next(iter(throughput_results.values())).get('sleep_s', '?')} s; runs are created back to back by one "
            "client; wall = first create to last final state; avg in flight = total Running time / wall."
        )
    api = results.get("api_calls")
    if api and api.get("per_execution"):
        lines += ["", "## Prefect API calls per low-latency execution", ""]
        for kind, data in api["per_execution"].items():
            by_who = ", ".join(
                f"{who} {n:.1f}" for who, n in data["rest_per_execution_by_who"].items()
            )
            lines.append(
                f"### `{kind}` flow: {data['rest_per_execution']:.1f} REST calls per execution ({by_who});"
                f" {data['runs']} executions, {data['failed']} failed"
            )
            lines.append("")
            lines.append("| who | method | endpoint | per execution | mean ms | max ms |")
            lines.append("| --- | --- | --- | ---: | ---: | ---: |")
            for row in sorted(data["rows"], key=lambda r: (r["who"], -r["per_execution"])):
                if row["per_execution"] < 0.05:
                    continue
                mean = "" if row["mean_ms"] is None else f"{row['mean_ms']:.0f}"
                slowest = "" if row["max_ms"] is None else f"{row['max_ms']:.0f}"
                lines.append(
                    f"| {row['who']} | {row['method']} | `{row['endpoint']}` |"
                    f" {row['per_execution']:.1f} | {mean} | {slowest} |"
                )
            lines.append("")
        lines.append(
            "Per execution = (calls in the measuring window - the idle rate x the window) / runs. "
            "WS> is one websocket message sent to the server (an event on /events/in), WS< one "
            "received (an event delivered to a subscriber). Idle background, per second: "
            + ", ".join(f"{k} {v:.2f}" for k, v in api["idle_calls_per_s"].items())
        )
        trace = api["traces"].get("sync")
        if trace:
            lines += ["", "### Timeline of one `sync` execution (ms from the create call)", ""]
            lines.append("| at | took | who | method | endpoint |")
            lines.append("| ---: | ---: | --- | --- | --- |")
            for c in trace:
                lines.append(
                    f"| {c['at_ms']:.0f} | {c['duration_ms']:.0f} | {c['who']} | {c['method']} | `{c['endpoint']}` |"
                )
    lines += report_endpoint_path(results.get("endpoint_path", {}))
    if results["errors"]:
        lines += ["", "## Paths that failed here", ""]
        lines += [f"- {name}: {error}" for name, error in results["errors"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


async def run_all(
    args: argparse.Namespace, api_url: str, children: list[ChildProcess], results: dict[str, Any]
) -> None:
    watcher = RunWatcher(api_url)
    await watcher.start()
    try:
        async with bench_client(api_url) as client:
            bench = Bench(api_url, client, watcher, args, children, results)
            sections: list[tuple[str, Callable[[Bench], Awaitable[None]]]] = [
                ("create", create_cost_section),
                ("pipedeploy", pipedeploy_section),
                ("logs", logs_section),
                ("gateway", gateway_section),
                ("process", process_worker_section),
                ("serve", serve_section),
                ("api", api_count_section),
                ("docker", docker_runtime_section),
            ]
            for name, section in sections:
                if name in args.skip:
                    continue
                started = time.monotonic()
                try:
                    await section(bench)
                except Exception as exc:
                    results["errors"][name] = f"{type(exc).__name__}: {exc}"
                    say(f"  section {name} failed: {type(exc).__name__}: {exc}")
                    say(traceback.format_exc())
                results["meta"]["section_s"][name] = time.monotonic() - started
                say(f"  [{name}: {time.monotonic() - started:.0f} s]")
    finally:
        await watcher.stop()


async def logs_section(bench: Bench) -> None:
    await logs_at_final_section(bench, FLOWS_FILE)


async def docker_runtime_section(bench: Bench) -> None:
    await docker_section(bench, FLOWS_FILE, start_pipedeploy_worker, wait_until_up, wait_for_log)


async def gateway_section(bench: Bench) -> None:
    await endpoint_path_section(bench, FLOWS_FILE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="measured runs per low-latency path")
    parser.add_argument(
        "--slow-runs",
        type=int,
        default=5,
        help="measured runs per slow path (elastic, process worker, serve)",
    )
    parser.add_argument("--throughput-runs", type=int, default=30, help="runs for the parallel pod")
    parser.add_argument(
        "--process-throughput-runs",
        type=int,
        default=8,
        help="runs for the process worker's throughput",
    )
    parser.add_argument(
        "--parallel", type=int, default=6, help="max parallel executions of the pod"
    )
    parser.add_argument("--sleep-s", type=float, default=0.5, help="sleep of the throughput flow")
    parser.add_argument(
        "--count-runs", type=int, default=10, help="executions counted per flow kind"
    )
    parser.add_argument(
        "--idle-s", type=float, default=4.0, help="idle window that measures background calls"
    )
    parser.add_argument(
        "--create-runs", type=int, default=12, help="create calls per pool type (create cost)"
    )
    parser.add_argument(
        "--no-fast-retry",
        action="store_true",
        help="leave out the throughput run whose creates retry a 503 after 20 ms",
    )
    parser.add_argument(
        "--count-async",
        action="store_true",
        help="also count the calls of an `async def` low-latency flow",
    )
    parser.add_argument(
        "--gap-s",
        type=float,
        default=0.2,
        help="pause before each measured run, so it finds the system at rest (0: back to back)",
    )
    parser.add_argument(
        "--run-timeout", type=float, default=90.0, help="seconds before a run counts as lost"
    )
    parser.add_argument(
        "--watch",
        choices=["events", "poll"],
        default="events",
        help="see completion by events or a 20 ms poll",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[
            "create",
            "pipedeploy",
            "logs",
            "gateway",
            "elastic",
            "throughput",
            "process",
            "serve",
            "api",
            "docker",
        ],
        help="sections to leave out",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help="the Prefect server's database (postgresql: a throwaway cluster from Debian's package)",
    )
    parser.add_argument(
        "--keep", action="store_true", help=f"keep the temporary home ({HOME}) with the logs"
    )
    return parser.parse_args(argv)


def stop_tree(child: ChildProcess) -> None:
    """Stop a child, then whatever it started in sessions of its own (pods, runs) if still alive."""
    try:
        descendants = psutil.Process(child.popen.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    child.stop()
    alive = [p for p in descendants if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(alive, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()


def finish(
    args: argparse.Namespace,
    results: dict[str, Any],
    children: list[ChildProcess],
    started: datetime.datetime,
) -> None:
    """Stop every child (last started first), print the report and write the results."""
    for child in reversed(list(children)):
        stop_tree(child)
    children.clear()
    results["meta"]["load_average_at_end"] = os.getloadavg()
    results["meta"]["total_s"] = (
        datetime.datetime.now(datetime.timezone.utc) - started
    ).total_seconds()
    text = report(results)
    print(text, flush=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"latency-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({**results, "report_markdown": text}, indent=1, default=str))
    say(f"Wrote {path} (total {results['meta']['total_s']:.0f} s)")
    if args.keep:
        KEEP.append(True)
        say(f"Logs kept in {HOME / 'logs'}")
    else:
        shutil.rmtree(HOME, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "prefect": prefect.__version__,
            "watch": "websocket events" if args.watch == "events" else "a 20 ms poll",
            "args": vars(args),
            "section_s": {},
            "load_average_at_start": os.getloadavg(),
        },
        "latency": {},
        "throughput": {},
        "errors": {},
    }
    children: list[ChildProcess] = []
    interrupted: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        # Not through asyncio's cancellation: a task deep in Prefect's client may not give
        # up promptly. Stop everything from here, report what was measured, and leave.
        if interrupted:
            return
        interrupted.append(signum)
        say(f"\nInterrupted ({signal.Signals(signum).name}): stopping everything started")
        results["errors"]["interrupted"] = signal.Signals(signum).name
        finish(args, results, children, started)
        os._exit(130)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        say(f"Starting a Prefect server ({args.database}, home {HOME})")
        t0 = time.monotonic()
        started_children, api_url = start_prefect_server_on(
            args.database, HOME / "server", ui=False
        )
        children.extend(started_children)
        say(f"  up at {api_url} in {time.monotonic() - t0:.1f} s")
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            asyncio.run(run_all(args, api_url, children, results))
    except Exception as exc:
        results["errors"]["benchmark"] = f"{type(exc).__name__}: {exc}"
        say(traceback.format_exc())
    finally:  # also on SystemExit and the like: nothing started is left running
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        finish(args, results, children, started)
    return 1 if "benchmark" in results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
