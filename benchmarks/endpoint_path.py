"""Benchmark section: the endpoint path, next to the bookkeeping floor measured in the same run.

For: `benchmarks/latency.py` runs it as its `gateway` section (issue 14's rows):

    .venv/bin/python benchmarks/latency.py --skip create pipedeploy logs process serve api --runs 10

One pipedeploy worker and two `pipedeploy gateway` processes serve two low-latency endpoint
deployments on their own pool: `bench-gw-noop` (a `def` pipeline that does nothing, queue
mode) and `bench-gw-par` (an `async def` pipeline sleeping `sleep_s`, parallel, 16 per pod).
The gateways differ in one setting, `gateway_direct_dispatch`: "direct" is started with it
true (the gateway hands the call straight to the pod), "worker path" with it false (the call
becomes a flow run the worker hands to the pod). Rows:
- floor: Prefect's own bookkeeping of one execution, two sequential writes (create the flow run
  of `bench-gw-noop` already Running, then set it Completed); nothing runs.
- sdk: create the run, see its final state on the event stream, read it back (as section 1).
- gateway, per gateway: `POST /endpoints/{path}` waiting for the answer with the outputs; the
  calls alternate between the two gateways, so both see the same machine.
- back-to-back, per gateway: six non-waiting calls to the parallel pod, one after the other,
  each a 1 s execution: when each was answered, and when the last execution was seen final.
- accept, per gateway: 32 concurrent callers make ACCEPT_CALLS non-waiting calls to the
  parallel pod while it is busy: 202s per second, how long a 202 took, and how the others were
  answered. The pod is idle when each half begins: its calls make it busy, and a direct half
  holds the whole work of the executions its pod takes.
- accept, pod full first, per gateway: the same burst once every slot of the pod runs a
  FULL_SLEEP_S execution (made by calls through the same gateway and seen Running first), so
  the whole burst meets a busy pod; also whether the pod was still full when it ended.
- parallel, per gateway: 16 concurrent callers make PARALLEL_CALLS waiting calls of a 0 s
  execution: p50, p99, executions/s.
The accept and parallel rows also say where their time went: the CPU the Prefect server,
PostgreSQL, the worker with its pods, each gateway and the benchmark itself used over the
bursts, per call, and as a share of one core (`cpu.CpuMeter`); on 2 cores, a part near 100 %
of a core is what bounds the row.
Back-to-back runs through the direct gateway, then the other; the accept rows and parallel each
in four parts of half a gateway's calls (direct, worker path, worker path, direct), each after
the previous part's executions are final. Each latency row also shows its p50 divided by the
floor's p50. Not for: a run on its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import httpx
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Completed, Running

from benchmarks.cpu import CpuMeter, add_used, cpu_line
from benchmarks.logs_at_final import BenchLike as LogsBenchLike
from benchmarks.logs_at_final import say, wait_until_up
from benchmarks.stats import percentile
from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.cli.up import with_gateway_settings
from prefect_pipedeploy.settings import PipeDeploySettings
from prefect_pipedeploy.stack import ChildProcess, Database, free_port, wait_for_http

POOL = "bench-gateway"
PARALLEL = 16
# The setting the two gateways differ in, read by `pipedeploy gateway` when it starts. Spelled
# out rather than `env_name("gateway_direct_dispatch")`, which refuses a setting the installed
# package does not have yet; a gateway without the setting ignores the variable.
DIRECT_DISPATCH_ENV = "PREFECT_INTEGRATIONS_PIPEDEPLOY_GATEWAY_DIRECT_DISPATCH"
#: The two gateways: their key in the results -> the value of DIRECT_DISPATCH_ENV.
GATEWAYS = {"direct": "true", "worker_path": "false"}
# Calls per gateway of the accept and parallel rows (answers other than 429). Both rows run
# through both gateways at about 1 call/s on 2 cores (SQLite, one create at a time): with the
# 96 and 64 of one gateway they took 7.5 minutes, with these about 4.5.
ACCEPT_CALLS = 64
PARALLEL_CALLS = 48
#: The executions that fill every slot of the pod before a "pod full first" accept half: long
#: enough to outlast the burst (2-4 s on 2 cores).
FULL_SLEEP_S = 8.0


class WatcherLike(Protocol):
    async def wait_final(self, run_id: UUID, timeout_s: float) -> float: ...


class BenchLike(LogsBenchLike, Protocol):
    """What this section uses of latency.py's `Bench`."""

    @property
    def watcher(self) -> WatcherLike: ...  # read-only here, so `Bench.watcher: RunWatcher` fits

    children: list[ChildProcess]


def label(key: str) -> str:
    """A gateway's name in the report: "direct", "worker path"."""
    return key.replace("_", " ")


def latency_row(label: str, samples: list[float], failures: int = 0) -> dict[str, Any]:
    return {
        "label": label,
        "n": len(samples),
        "failures": failures,
        "p50_s": statistics.median(samples) if samples else None,
        "p99_s": percentile(samples, 99) if samples else None,
        "samples_s": samples,
    }


def against_floor(row: dict[str, Any], floor_s: float) -> str:
    """ "p50 0.123 s, 1.4x the floor" (or that the row has no sample)."""
    if row["p50_s"] is None:
        return f"no sample ({row['failures']} failed)"
    return f"p50 {row['p50_s']:.3f} s, {row['p50_s'] / floor_s:.1f}x the floor ({floor_s:.3f} s)"


class Endpoint:
    """One endpoint of one gateway: its URL and token."""

    def __init__(self, gateway: str, created: dict[str, Any]) -> None:
        self.url = f"{gateway}/endpoints/{created['endpoint_url_path']}"
        self.headers = {"Authorization": f"EndpointToken {created['endpoint_token']}"}
        self.deployment_id = UUID(created["id"])

    async def call(
        self, http: httpx.AsyncClient, body: dict[str, Any], wait: bool = True
    ) -> tuple[int, float, dict[str, Any]]:
        """(status, seconds, JSON answer) of one call."""
        params = {} if wait else {"wait_for_completion": "false"}
        started = time.perf_counter()
        response = await http.post(
            self.url, params=params, json=body, headers=self.headers, timeout=120
        )
        elapsed = time.perf_counter() - started
        try:
            answer = response.json()
        except ValueError:
            answer = {"text": response.text[:200]}
        return response.status_code, elapsed, answer


async def floor_row(bench: BenchLike, deployment_id: UUID, runs: int) -> dict[str, Any]:
    """Two sequential writes per execution: a run created Running, then set Completed."""
    samples = []
    for _ in range(runs + 1):
        await asyncio.sleep(bench.args.gap_s)
        started = time.perf_counter()
        run = await bench.client.create_flow_run_from_deployment(deployment_id, state=Running())
        await bench.client.set_flow_run_state(run.id, Completed())
        samples.append(time.perf_counter() - started)
    return latency_row("floor: create a run Running + set it Completed", samples[1:])


async def sdk_row(bench: BenchLike, deployment_id: UUID, runs: int) -> dict[str, Any]:
    samples, failed = [], []
    for i in range(runs + 1):
        await asyncio.sleep(bench.args.gap_s)
        sample = await bench.round_trip(deployment_id)
        if sample["state"] != "COMPLETED":
            failed.append({key: sample[key] for key in ("id", "state", "message")})
            say(f"  SDK run {sample['id']}: {sample['state']}: {sample['message']}")
        elif i:
            samples.append(sample["round_trip_s"])
    row = latency_row("SDK: create + final state seen on events + read", samples, len(failed))
    row["failed"] = failed
    return row


async def gateway_rows(
    bench: BenchLike, http: httpx.AsyncClient, endpoints: dict[str, Endpoint], runs: int
) -> dict[str, dict[str, Any]]:
    """Waiting calls through each gateway, alternating (and alternating which goes first), each
    `gap_s` after the previous one was answered; the first call through each is a warm-up."""
    samples: dict[str, list[float]] = {key: [] for key in endpoints}
    failures = dict.fromkeys(endpoints, 0)
    order = list(endpoints)
    for i in range(runs + 1):
        for key in order if i % 2 == 0 else order[::-1]:
            await asyncio.sleep(bench.args.gap_s)
            status, elapsed, answer = await endpoints[key].call(http, {})
            if status != 200 or "outputs" not in answer:
                failures[key] += 1
                say(f"  gateway {label(key)}: call answered {status}: {answer}")
            elif i:
                samples[key].append(elapsed)
    return {
        key: latency_row(
            f"gateway {label(key)}: POST /endpoints/{{path}}, answer with outputs",
            samples[key],
            failures[key],
        )
        for key in endpoints
    }


async def back_to_back(
    bench: BenchLike, http: httpx.AsyncClient, endpoint: Endpoint, name: str
) -> dict[str, Any]:
    """Six non-waiting calls one after the other, each a 1 s execution."""
    started = time.perf_counter()
    answered, ids, statuses = [], [], []
    for _ in range(6):
        status, _, answer = await endpoint.call(http, {"sleep_s": 1.0}, wait=False)
        answered.append(time.perf_counter() - started)
        statuses.append(status)
        if status == 202:
            ids.append(UUID(answer["execution_id"]))
    finals = [await bench.watcher.wait_final(run_id, 120) for run_id in ids]
    answer_s = [b - a for a, b in zip([0.0, *answered[:-1]], answered, strict=True)]
    row = latency_row(
        f"back-to-back {name}: 6 non-waiting calls one after another, each answer", answer_s
    )
    row.update(
        {
            "statuses": statuses,
            "answered_at_s": answered,
            "answer_s": answer_s,
            "last_final_s": max(finals) - started if finals else None,
        }
    )
    return row


async def callers(
    count: int, calls: int, one: Any, deadline_s: float = 120.0
) -> tuple[list[tuple[int, float, dict[str, Any]]], float]:
    """`count` concurrent callers, each calling again when answered, until `calls` calls were
    answered other than 429 (or `deadline_s` passed); a caller answered 429 waits 0.2 s
    (not the Retry-After: that would measure the pause, not the gateway)."""
    answered: list[tuple[int, float, dict[str, Any]]] = []
    started = time.perf_counter()

    def more() -> bool:
        return (
            sum(1 for status, _, _ in answered if status != 429) < calls
            and time.perf_counter() - started < deadline_s
        )

    async def caller() -> None:
        while more():
            result = await one()
            answered.append(result)
            if result[0] == 429:
                await asyncio.sleep(0.2)

    await asyncio.gather(*(caller() for _ in range(count)))
    return answered, time.perf_counter() - started


Answered = list[tuple[int, float, dict[str, Any]]]


def abba(keys: list[str]) -> list[str]:
    """The order of a load row's halves: each gateway, then each again in reverse, so that a
    drift over the row (the server's tables growing, other work on the machine) weighs on both
    gateways alike."""
    return [*keys, *reversed(keys)]


async def accept_rows(
    bench: BenchLike,
    http: httpx.AsyncClient,
    endpoints: dict[str, Endpoint],
    calls: int,
    full_first: bool = False,
    meter: CpuMeter | None = None,
) -> dict[str, dict[str, Any]]:
    """Per gateway, `calls` non-waiting calls of a 0.5 s execution from 32 concurrent callers
    while the pod is busy, in two halves (`abba`); each half returns once every execution it
    had accepted is final, so the next half finds the pod idle. `full_first`: every slot of the
    pod runs a FULL_SLEEP_S execution before each half's burst (`fill_pod`), and the row says
    whether all of them were still Running when the burst ended. With `meter`, each row has
    the CPU each part of the stack used over its bursts (`cpu_s`)."""
    answered: dict[str, Answered] = {key: [] for key in endpoints}
    wall_s = dict.fromkeys(endpoints, 0.0)
    cpu_s: dict[str, dict[str, float]] = {key: {} for key in endpoints}
    full_throughout = dict.fromkeys(endpoints, True)
    for key in abba(list(endpoints)):
        filling = await fill_pod(bench, http, endpoints[key]) if full_first else []
        one = functools.partial(endpoints[key].call, http, {"sleep_s": 0.5}, wait=False)
        results, wall, used = await metered(meter, callers(32, calls // 2, one))
        cpu_s[key] = add_used(cpu_s[key], used)
        if filling and await running(bench, filling) < len(filling):
            full_throughout[key] = False
        accepted = [UUID(answer["execution_id"]) for status, _, answer in results if status == 202]
        for run_id in [*filling, *accepted]:
            await bench.watcher.wait_final(run_id, 300)
        answered[key] += results
        wall_s[key] += wall
        await asyncio.sleep(1)
    rows = {}
    for key in endpoints:
        rows[key] = accept_row(label(key), calls, answered[key], wall_s[key], full_first)
        rows[key]["cpu_s"] = cpu_s[key]
        if full_first:
            rows[key]["pod_full_throughout"] = full_throughout[key]
    return rows


async def metered(
    meter: CpuMeter | None, burst: Coroutine[Any, Any, tuple[Answered, float]]
) -> tuple[Answered, float, dict[str, float]]:
    """`burst`'s answers and wall time, and the CPU each part used meanwhile ({} without a
    meter)."""
    if meter is not None:
        meter.start()
    results, wall = await burst
    return results, wall, meter.used() if meter is not None else {}


async def running(bench: BenchLike, ids: list[UUID]) -> int:
    """How many of the runs `ids` are Running now."""
    runs = await bench.client.read_flow_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
    )
    return sum(1 for run in runs if run.state is not None and run.state.is_running())


async def fill_pod(bench: BenchLike, http: httpx.AsyncClient, endpoint: Endpoint) -> list[UUID]:
    """PARALLEL non-waiting calls of FULL_SLEEP_S executions through `endpoint`; returns their
    run ids once all of them are Running (every slot of the pod taken)."""
    ids = []
    for _ in range(PARALLEL):
        status, _, answer = await endpoint.call(http, {"sleep_s": FULL_SLEEP_S}, wait=False)
        if status != 202:
            raise RuntimeError(f"a call to fill the pod was answered {status}: {answer}")
        ids.append(UUID(answer["execution_id"]))
    deadline = time.monotonic() + 60
    while await running(bench, ids) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError("the pod's slots were not all taken within 60 s")
        await asyncio.sleep(0.05)
    return ids


def accept_row(
    name: str, calls: int, answered: Answered, wall_s: float, full_first: bool = False
) -> dict[str, Any]:
    accepted = [elapsed for status, elapsed, _ in answered if status == 202]
    when = ", every slot of the pod taken first" if full_first else " while the pod is busy"
    row = latency_row(f"accept {name}: 32 non-waiting callers{when}, each 202", accepted)
    row.update(
        {
            "calls": calls,
            "statuses": dict(Counter(status for status, _, _ in answered)),
            "wall_s": wall_s,
            "accepted_per_s": len(accepted) / wall_s if wall_s else None,
        }
    )
    return row


async def parallel_rows(
    http: httpx.AsyncClient,
    endpoints: dict[str, Endpoint],
    calls: int,
    meter: CpuMeter | None = None,
) -> dict[str, dict[str, Any]]:
    """Per gateway, `calls` waiting calls of a 0 s execution from 16 concurrent callers, in two
    halves (`abba`); with `meter`, the CPU each part used (`cpu_s`)."""
    answered: dict[str, Answered] = {key: [] for key in endpoints}
    wall_s = dict.fromkeys(endpoints, 0.0)
    cpu_s: dict[str, dict[str, float]] = {key: {} for key in endpoints}
    for key in abba(list(endpoints)):
        one = functools.partial(endpoints[key].call, http, {"sleep_s": 0.0})
        results, wall, used = await metered(meter, callers(16, calls // 2, one))
        answered[key] += results
        wall_s[key] += wall
        cpu_s[key] = add_used(cpu_s[key], used)
        await asyncio.sleep(1)
    rows = {key: parallel_row(label(key), answered[key], wall_s[key]) for key in endpoints}
    for key, row in rows.items():
        row["cpu_s"] = cpu_s[key]
    return rows


def parallel_row(name: str, answered: Answered, wall_s: float) -> dict[str, Any]:
    done = [elapsed for status, elapsed, _ in answered if status == 200]
    row = latency_row(f"parallel {name}: 16 concurrent waiting callers, parallel pod", done)
    row.update(
        {
            "statuses": dict(Counter(status for status, _, _ in answered)),
            "wall_s": wall_s,
            "executions_per_s": len(done) / wall_s if wall_s else None,
        }
    )
    return row


def start_gateway(
    bench: BenchLike, command: list[str], env: dict[str, str], key: str
) -> tuple[ChildProcess, str]:
    """The `pipedeploy gateway` of one entry of GATEWAYS, on a free port: (process, URL).
    Returns at once; wait for the URL's /health before calling it."""
    port = free_port()
    child = bench.start(
        f"gateway-{key.replace('_', '-')}",
        [*command, "gateway", "--pool", POOL, "--port", str(port)],
        {**env, DIRECT_DISPATCH_ENV: GATEWAYS[key]},
    )
    return child, f"http://127.0.0.1:{port}"


async def endpoint_path_section(bench: BenchLike, flows_file: Path) -> None:
    args = bench.args
    say("\n## the endpoint path: gateway (direct, worker path), SDK and the bookkeeping floor")
    pd = PipeDeploy(api_url=bench.api_url, work_pool_name=POOL)
    noop = await pd.acreate_deployment(
        f"{flows_file}:bench_noop_sync", "bench-gw-noop", mode="low_latency"
    )
    par = await pd.acreate_deployment(
        f"{flows_file}:bench_sleep_async",
        "bench-gw-par",
        mode="low_latency",
        enable_parallel_executions=True,
        max_parallel_executions_per_pod=PARALLEL,
    )
    env = with_gateway_settings(  # as `pipedeploy up` starts them
        {**os.environ, "PREFECT_API_URL": bench.api_url},
        Database(getattr(args, "database", "sqlite")),
    )
    command = [sys.executable, "-m", "prefect_pipedeploy.cli"]
    results: dict[str, Any] = {
        "direct_dispatch_setting": "gateway_direct_dispatch" in PipeDeploySettings.model_fields
    }
    bench.results["endpoint_path"] = results
    worker = bench.start("gateway-section-worker", [*command, "worker", "--pool", POOL], env)
    gateways: dict[str, tuple[ChildProcess, str]] = {}
    try:
        for key in GATEWAYS:
            gateways[key] = start_gateway(bench, command, env, key)
        for child, url in gateways.values():
            await asyncio.to_thread(wait_for_http, f"{url}/health", 90, child)
        await wait_until_up(pd, ["bench-gw-noop", "bench-gw-par"])
        meter = stack_meter(bench, worker, {key: child for key, (child, _) in gateways.items()})
        noop_at = {key: Endpoint(url, noop) for key, (_, url) in gateways.items()}
        par_at = {key: Endpoint(url, par) for key, (_, url) in gateways.items()}
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:
            say(f"- floor, SDK, and gateway through each gateway: {args.runs} runs each")
            deployment_id = UUID(noop["id"])
            results["floor"] = await floor_row(bench, deployment_id, args.runs)
            results["sdk"] = await sdk_row(bench, deployment_id, args.runs)
            for key, row in (await gateway_rows(bench, http, noop_at, args.runs)).items():
                results[key] = {"gateway": row}
            floor = results["floor"]["p50_s"]
            for row in [results["sdk"], *(results[key]["gateway"] for key in GATEWAYS)]:
                say(f"  {row['label']}: {against_floor(row, floor)}")
            for endpoint in par_at.values():
                await endpoint_call_warmup(http, endpoint)
            say("- six back-to-back non-waiting calls, 1 s executions, parallel pod")
            for key, endpoint in par_at.items():
                row = await back_to_back(bench, http, endpoint, label(key))
                results[key]["back_to_back"] = row
                say(
                    f"  {label(key)}: answered after {[round(s, 2) for s in row['answer_s']]} s,"
                    f" statuses {row['statuses']}, last final {row['last_final_s'] or 0:.2f} s"
                )
                await asyncio.sleep(1)
            say("- 32 concurrent callers, non-waiting calls while the pod is busy")
            accept = await accept_rows(bench, http, par_at, ACCEPT_CALLS, meter=meter)
            for key, row in accept.items():
                results[key]["accept"] = row
                say(
                    f"  {label(key)}: {row['accepted_per_s']:.1f} accepted per s, "
                    f"{against_floor(row, floor)}, answers {row['statuses']}"
                )
                say(f"    {cpu_line(row['cpu_s'], row['n'], 'accepted call')}")
            say("- the same, with every slot of the pod taken before the burst")
            full = await accept_rows(
                bench, http, par_at, ACCEPT_CALLS, full_first=True, meter=meter
            )
            for key, row in full.items():
                results[key]["accept_full"] = row
                say(
                    f"  {label(key)}: {row['accepted_per_s']:.1f} accepted per s, "
                    f"{against_floor(row, floor)}, answers {row['statuses']}, pod full "
                    f"throughout: {'yes' if row['pod_full_throughout'] else 'no'}"
                )
                say(f"    {cpu_line(row['cpu_s'], row['n'], 'accepted call')}")
            say("- 16 concurrent waiting callers, parallel pod")
            parallel = await parallel_rows(http, par_at, PARALLEL_CALLS, meter=meter)
            for key, row in parallel.items():
                results[key]["parallel"] = row
                say(
                    f"  {label(key)}: {against_floor(row, floor)}, "
                    f"{row['executions_per_s']:.1f} executions/s"
                )
                say(f"    {cpu_line(row['cpu_s'], row['n'], 'execution')}")
    finally:
        for child, _ in gateways.values():
            bench.stop(child)
        bench.stop(worker)


def stack_meter(
    bench: BenchLike, worker: ChildProcess, gateways: dict[str, ChildProcess]
) -> CpuMeter:
    """A meter of the Prefect server, PostgreSQL (when the stack has it), the worker with its
    pods, and each gateway."""
    parts = {
        child.name: child.popen.pid
        for child in bench.children
        if child.name in ("prefect-server", "postgresql")
    }
    parts["worker + pods"] = worker.popen.pid
    for key, child in gateways.items():
        parts[f"gateway {label(key)}"] = child.popen.pid
    return CpuMeter(parts)


async def endpoint_call_warmup(http: httpx.AsyncClient, endpoint: Endpoint) -> None:
    status, _, answer = await endpoint.call(http, {"sleep_s": 0.0})
    if status != 200:
        raise RuntimeError(f"the parallel endpoint answered {status} at {endpoint.url}: {answer}")


def report_endpoint_path(results: dict[str, Any]) -> list[str]:
    """The section's Markdown lines."""
    if not results or "floor" not in results:
        return []
    floor = results["floor"]["p50_s"]
    lines = [
        "",
        "## The endpoint path (low latency) against the bookkeeping floor",
        "",
        "| row | n | p50 | p99 | p50 / floor | p99 / floor p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = [results["floor"], results.get("sdk")]
    for kind in ("gateway", "back_to_back", "accept", "accept_full", "parallel"):
        rows += [results.get(key, {}).get(kind) for key in GATEWAYS]
    for row in rows:
        if not row or row["p50_s"] is None:
            continue
        lines.append(
            f"| {row['label']} | {row['n']} | {row['p50_s'] * 1000:.0f} ms | "
            f"{row['p99_s'] * 1000:.0f} ms | {row['p50_s'] / floor:.1f}x | "
            f"{row['p99_s'] / floor:.1f}x |"
        )
    lines += ["", dispatch_note(results)]
    for key in GATEWAYS:
        lines += load_lines(label(key), results.get(key, {}))
    return lines


def dispatch_note(results: dict[str, Any]) -> str:
    """How the two gateways were started, and whether they could differ."""
    note = (
        f"direct: the gateway started with {DIRECT_DISPATCH_ENV}=true; worker path: with it false."
    )
    if results.get("direct_dispatch_setting") is False:
        note += (
            " The installed package has no `gateway_direct_dispatch` setting, so both gateways"
            " ignored it and took the worker path: their rows differ by noise only."
        )
    return note


def load_lines(name: str, results: dict[str, Any]) -> list[str]:
    """The back-to-back, accept and parallel rows of one gateway, in words."""
    lines = []
    if "back_to_back" in results:
        b = results["back_to_back"]
        lines.append(
            f"- {name}: six back-to-back non-waiting calls (1 s executions, parallel pod) "
            "answered after "
            + ", ".join(f"{s:.2f}" for s in b["answer_s"])
            + f" s (statuses {b['statuses']}); last execution final "
            + (f"{b['last_final_s']:.2f} s" if b["last_final_s"] else "-")
            + " after the first call."
        )
    if "accept" in results:
        a = results["accept"]
        lines.append(
            f"- {name}: 32 concurrent callers, {sum(a['statuses'].values())} non-waiting calls "
            f"while the pod is busy: {a['accepted_per_s']:.1f} accepted (202) per s, answers "
            f"{a['statuses']}."
        )
        if a.get("cpu_s"):
            lines.append(f"  {cpu_line(a['cpu_s'], a['n'], 'accepted call')}.")
    if "accept_full" in results:
        a = results["accept_full"]
        lines.append(
            f"- {name}: the same with every slot of the pod taken first: "
            f"{a['accepted_per_s']:.1f} accepted (202) per s, answers {a['statuses']}; the pod "
            + ("was" if a["pod_full_throughout"] else "was not")
            + " full until the burst ended."
        )
        if a.get("cpu_s"):
            lines.append(f"  {cpu_line(a['cpu_s'], a['n'], 'accepted call')}.")
    if "parallel" in results:
        p = results["parallel"]
        lines.append(
            f"- {name}: 16 concurrent waiting callers: {p['executions_per_s']:.1f} executions/s, "
            f"answers {p['statuses']}."
        )
        if p.get("cpu_s"):
            lines.append(f"  {cpu_line(p['cpu_s'], p['n'], 'execution')}.")
    return [""] + lines if lines else []
