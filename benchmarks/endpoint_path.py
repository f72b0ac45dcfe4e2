"""Benchmark section: the endpoint path, next to the bookkeeping floor measured in the same run.

For: `benchmarks/latency.py` runs it as its `gateway` section (issue 14's rows). One pipedeploy
worker and one `pipedeploy gateway` serve two low-latency endpoint deployments on their own
pool: `bench-gw-noop` (a `def` pipeline that does nothing, queue mode) and `bench-gw-par` (an
`async def` pipeline sleeping `sleep_s`, parallel, 16 per pod). Rows:
- floor: Prefect's own bookkeeping of one execution, two sequential writes (create the flow run
  of `bench-gw-noop` already Running, then set it Completed); nothing runs.
- sdk: create the run, see its final state on the event stream, read it back (as section 1).
- gateway: `POST /endpoints/{path}` waiting for the answer with the outputs.
- back-to-back: six non-waiting calls to the parallel pod, one after the other, each a 1 s
  execution: when each was answered, and when the last execution was seen final.
- accept: 32 concurrent callers make non-waiting calls to the parallel pod while it is busy:
  202s per second, and how the others were answered.
- parallel: 16 concurrent callers make waiting calls of a 0 s execution: p50, p99,
  executions/s.
Each latency row also shows its p50 divided by the floor's p50. Not for: a run on its own
(see latency.py's usage line).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import httpx
from prefect.states import Completed, Running

from benchmarks.logs_at_final import BenchLike as LogsBenchLike
from benchmarks.logs_at_final import say, wait_until_up
from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy.stack import free_port, wait_for_http

POOL = "bench-gateway"
PARALLEL = 16


class WatcherLike(Protocol):
    async def wait_final(self, run_id: UUID, timeout_s: float) -> float: ...


class BenchLike(LogsBenchLike, Protocol):
    """What this section uses of latency.py's `Bench`."""

    watcher: WatcherLike


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with 100 values or fewer, p99 is the maximum."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def latency_row(label: str, samples: list[float], failures: int = 0) -> dict[str, Any]:
    return {
        "label": label,
        "n": len(samples),
        "failures": failures,
        "p50_s": statistics.median(samples) if samples else None,
        "p99_s": percentile(samples, 99) if samples else None,
        "samples_s": samples,
    }


class Endpoint:
    """One endpoint of the gateway: its URL and token."""

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
    samples, failures = [], 0
    for i in range(runs + 1):
        await asyncio.sleep(bench.args.gap_s)
        sample = await bench.round_trip(deployment_id)
        if sample["state"] != "COMPLETED":
            failures += 1
        elif i:
            samples.append(sample["round_trip_s"])
    return latency_row("SDK: create + final state seen on events + read", samples, failures)


async def gateway_row(
    bench: BenchLike, http: httpx.AsyncClient, endpoint: Endpoint, runs: int
) -> dict[str, Any]:
    samples, failures = [], 0
    for i in range(runs + 1):
        await asyncio.sleep(bench.args.gap_s)
        status, elapsed, answer = await endpoint.call(http, {})
        if status != 200 or "outputs" not in answer:
            failures += 1
            say(f"  gateway call answered {status}: {answer}")
        elif i:
            samples.append(elapsed)
    return latency_row("gateway: POST /endpoints/{path}, answer with outputs", samples, failures)


async def back_to_back(
    bench: BenchLike, http: httpx.AsyncClient, endpoint: Endpoint
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
    return {
        "statuses": statuses,
        "answered_at_s": answered,
        "answer_s": [b - a for a, b in zip([0.0, *answered[:-1]], answered, strict=True)],
        "last_final_s": max(finals) - started if finals else None,
    }


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


async def accept_rate(
    bench: BenchLike, http: httpx.AsyncClient, endpoint: Endpoint, calls: int
) -> dict[str, Any]:
    """32 concurrent callers, non-waiting calls of a 0.5 s execution, the pod busy."""
    results, wall = await callers(
        32, calls, lambda: endpoint.call(http, {"sleep_s": 0.5}, wait=False)
    )
    statuses = Counter(status for status, _, _ in results)
    accepted = [elapsed for status, elapsed, _ in results if status == 202]
    ids = [UUID(answer["execution_id"]) for status, _, answer in results if status == 202]
    for run_id in ids:
        await bench.watcher.wait_final(run_id, 300)
    return {
        "calls": calls,
        "statuses": dict(statuses),
        "wall_s": wall,
        "accepted_per_s": len(accepted) / wall if wall else None,
        "accept_p50_s": statistics.median(accepted) if accepted else None,
    }


async def parallel_callers(
    http: httpx.AsyncClient, endpoint: Endpoint, calls: int
) -> dict[str, Any]:
    """16 concurrent callers, waiting calls of a 0 s execution."""
    results, wall = await callers(16, calls, lambda: endpoint.call(http, {"sleep_s": 0.0}))
    done = [elapsed for status, elapsed, _ in results if status == 200]
    row = latency_row(f"parallel pod, {16} concurrent waiting callers", done)
    row.update(
        {
            "statuses": dict(Counter(status for status, _, _ in results)),
            "wall_s": wall,
            "executions_per_s": len(done) / wall if wall else None,
        }
    )
    return row


async def endpoint_path_section(bench: BenchLike, flows_file: Path) -> None:
    args = bench.args
    say("\n## the endpoint path: gateway, SDK and the bookkeeping floor")
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
    env = {**os.environ, "PREFECT_API_URL": bench.api_url}
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "prefect_pipedeploy.cli"]
    worker = bench.start("gateway-section-worker", [*command, "worker", "--pool", POOL], env)
    gateway = bench.start(
        "gateway", [*command, "gateway", "--pool", POOL, "--port", str(port)], env
    )
    results: dict[str, Any] = {}
    bench.results["endpoint_path"] = results
    try:
        await asyncio.to_thread(wait_for_http, f"{gateway_url}/health", 90, gateway)
        await wait_until_up(pd, ["bench-gw-noop", "bench-gw-par"])
        noop_endpoint, par_endpoint = Endpoint(gateway_url, noop), Endpoint(gateway_url, par)
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=200)) as http:
            say(f"- floor, SDK and gateway rows: {args.runs} runs each")
            results["floor"] = await floor_row(bench, noop_endpoint.deployment_id, args.runs)
            results["sdk"] = await sdk_row(bench, noop_endpoint.deployment_id, args.runs)
            results["gateway"] = await gateway_row(bench, http, noop_endpoint, args.runs)
            floor = results["floor"]["p50_s"]
            for key in ("sdk", "gateway"):
                say(
                    f"  {key}: p50 {results[key]['p50_s']:.3f} s, "
                    f"{results[key]['p50_s'] / floor:.1f}x the floor ({floor:.3f} s)"
                )
            await endpoint_call_warmup(http, par_endpoint)
            say("- six back-to-back non-waiting calls, 1 s executions, parallel pod")
            results["back_to_back"] = await back_to_back(bench, http, par_endpoint)
            say(f"  {results['back_to_back']}")
            await asyncio.sleep(1)
            say("- 32 concurrent callers, non-waiting calls while the pod is busy")
            results["accept"] = await accept_rate(bench, http, par_endpoint, 96)
            say(f"  {results['accept']}")
            await asyncio.sleep(1)
            say(f"- {16} concurrent waiting callers, parallel pod")
            results["parallel"] = await parallel_callers(http, par_endpoint, 64)
            say(
                f"  p50 {results['parallel']['p50_s']}, "
                f"{results['parallel']['executions_per_s']} executions/s"
            )
    finally:
        bench.stop(gateway)
        bench.stop(worker)


async def endpoint_call_warmup(http: httpx.AsyncClient, endpoint: Endpoint) -> None:
    status, _, answer = await endpoint.call(http, {"sleep_s": 0.0})
    if status != 200:
        raise RuntimeError(f"the parallel endpoint answered {status}: {answer}")


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
    for key in ("floor", "sdk", "gateway", "parallel"):
        row = results.get(key)
        if not row or row["p50_s"] is None:
            continue
        lines.append(
            f"| {row['label']} | {row['n']} | {row['p50_s'] * 1000:.0f} ms | "
            f"{row['p99_s'] * 1000:.0f} ms | {row['p50_s'] / floor:.1f}x | "
            f"{row['p99_s'] / floor:.1f}x |"
        )
    lines.append("| gateway direct to the pod | - | not built yet | | | |")
    if "back_to_back" in results:
        b = results["back_to_back"]
        lines += [
            "",
            "Six back-to-back non-waiting calls (1 s executions, parallel pod): answered after "
            + ", ".join(f"{s:.2f}" for s in b["answer_s"])
            + f" s (statuses {b['statuses']}); last execution final "
            + (f"{b['last_final_s']:.2f} s" if b["last_final_s"] else "-")
            + " after the first call.",
        ]
    if "accept" in results:
        a = results["accept"]
        lines.append(
            f"32 concurrent callers, {a['calls']} non-waiting calls while the pod is busy: "
            f"{a['accepted_per_s']:.1f} accepted (202) per s, answers {a['statuses']}, "
            f"202 p50 {a['accept_p50_s'] or 0:.2f} s."
        )
    if "parallel" in results:
        p = results["parallel"]
        lines.append(
            f"16 concurrent waiting callers: {p['executions_per_s']:.1f} executions/s, "
            f"answers {p['statuses']}."
        )
    return lines
