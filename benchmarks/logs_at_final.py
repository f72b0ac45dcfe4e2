"""Benchmark section: what storing a run's logs before its final state costs, and what it buys.

For: `benchmarks/latency.py --skip ...` runs it as its `logs` section. Two pipedeploy workers on
two pools, one with `flush_logs_before_final` on (the default) and one with it off (the lines
leave in Prefect's 2 s batches, as before the change), serve the same pipelines: a `def` and an
`async def` low-latency pipeline and an elastic one, each printing N numbered lines. Runs
alternate between the two pools, so both see the same machine. For each run: the round trip
(create -> final state seen -> read back, as in section 1), whether every line was stored when
the run was seen final, and how long after that the last line was stored. Not for: a run on
its own (see latency.py's usage line).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker
from prefect.logging.loggers import flow_run_logger

from benchmarks.stats import percentile
from prefect_pipedeploy import PipeDeploy
from prefect_pipedeploy._compat import install_api_log_sink
from prefect_pipedeploy.engine.runlogs import RunLogs
from prefect_pipedeploy.settings import env_name
from prefect_pipedeploy.stack import ChildProcess

POOLS = {"on": "bench-logs-on", "off": "bench-logs-off"}
LINES = 14


class BenchLike(Protocol):
    """What this section uses of latency.py's `Bench`."""

    api_url: str
    client: PrefectClient
    args: Any
    results: dict[str, Any]

    async def round_trip(
        self, deployment_id: UUID, parameters: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...

    def start(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> ChildProcess: ...

    def stop(self, child: ChildProcess) -> None: ...


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


async def stored_lines(client: PrefectClient, run_id: str, tag: str) -> int:
    logs = await client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])), limit=200
    )
    return sum(1 for log in logs if log.message.startswith(f"{tag} line "))


async def wait_until_up(pd: PipeDeploy, names: list[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    for name in names:
        while (await pd.aget_deployment(name))["status"] != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pod of {name} is not up after {timeout_s:.0f} s")
            await asyncio.sleep(0.3)


def start_worker(bench: BenchLike, flush: str) -> ChildProcess:
    env = {
        **os.environ,
        "PREFECT_API_URL": bench.api_url,
        env_name("flush_logs_before_final"): "true" if flush == "on" else "false",
    }
    child = bench.start(
        f"pipedeploy-worker-logs-{flush}",
        [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", POOLS[flush]],
        env,
    )
    deadline = time.monotonic() + 90
    while "started!" not in child.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline or not child.alive():
            raise RuntimeError(f"{child.name} did not start:\n{child.log_tail()}")
        time.sleep(0.2)
    return child


async def sample(bench: BenchLike, deployment_id: UUID) -> dict[str, Any]:
    """One round trip, then the logs: stored at final? when was the last line stored?"""
    tag = f"b{uuid.uuid4().hex[:8]}"
    trip = await bench.round_trip(deployment_id, {"tag": tag, "n": LINES})
    seen_final = time.perf_counter()
    at_final = await stored_lines(bench.client, trip["id"], tag)
    complete_after_s = 0.0
    while at_final < LINES:
        await asyncio.sleep(0.05)
        complete_after_s = time.perf_counter() - seen_final
        if await stored_lines(bench.client, trip["id"], tag) >= LINES or complete_after_s > 10:
            break
    return {**trip, "lines_at_final": at_final, "complete_after_s": complete_after_s}


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    done = [s for s in samples if s["state"] == "COMPLETED"]
    if not done:
        return {"runs": 0, "failures": samples}
    trips = sorted(s["round_trip_s"] for s in done)
    late = [s["complete_after_s"] for s in done]
    return {
        "runs": len(done),
        "p50_s": statistics.median(trips),
        "p99_s": percentile(trips, 99),
        "complete_at_final": sum(1 for s in done if s["lines_at_final"] >= LINES),
        "lines_at_final_p50": statistics.median(s["lines_at_final"] for s in done),
        "complete_after_p50_s": statistics.median(late),
        "complete_after_max_s": max(late),
        "failures": [s for s in samples if s["state"] != "COMPLETED"],
        "samples": samples,
    }


@flow
def bench_flush_target() -> None:
    """A flow no worker runs: the flow run whose lines the flush measurement sends."""


async def flush_cost(bench: BenchLike, times: int) -> dict[str, Any]:
    """What the flush before a final state costs by itself, in this process against the same
    server: `RunLogs.aflush` of one run's lines (one POST, with a client already open), and,
    for reference, the same lines flushed with Prefect's own log worker (`drain_all`: it stops
    the worker, and the next line starts a new one with a new client)."""
    flow_run = await bench.client.create_flow_run(bench_flush_target)
    run_logger = flow_run_logger(flow_run)
    ours: list[float] = []
    prefects: list[float] = []
    run_logs = RunLogs()
    for i in range(times + 1):
        install_api_log_sink(run_logs.sink)
        try:
            for n in range(LINES + 2):
                run_logger.info(f"flush {i} line {n:03d}")
            t0 = time.perf_counter()
            await run_logs.aflush(bench.client, flow_run.id)
            ours.append(time.perf_counter() - t0)
        finally:
            install_api_log_sink(None)
        for n in range(LINES + 2):
            run_logger.info(f"drain {i} line {n:03d}")
        t0 = time.perf_counter()
        await APILogWorker.drain_all()  # type: ignore[misc]
        prefects.append(time.perf_counter() - t0)
    return {  # the first of each is a warm-up
        "runlogs_flush_p50_s": statistics.median(ours[1:]),
        "prefect_drain_p50_s": statistics.median(prefects[1:]),
        "times": times,
    }


async def logs_at_final_section(bench: BenchLike, flows_file: Path) -> None:
    args = bench.args
    say("\n## Logs complete at final: flush before the final state on / off")
    paths = [
        ("ll-sync", "bench_print_sync", "low_latency", args.runs),
        ("ll-async", "bench_print_async", "low_latency", args.runs),
    ]
    if "elastic" not in args.skip:
        paths.append(("elastic", "bench_print_sync", "elastic", args.slow_runs))
    ids: dict[tuple[str, str], UUID] = {}
    sdks = {
        flush: PipeDeploy(api_url=bench.api_url, work_pool_name=pool)
        for flush, pool in POOLS.items()
    }
    for flush, pd in sdks.items():
        for key, function, mode, _ in paths:
            name = f"bench-logs-{flush}-{key}"
            created = await pd.acreate_deployment(
                f"{flows_file}:{function}", name, execution_rule="endpoint", mode=mode
            )
            ids[(flush, key)] = UUID(created["id"])
    workers = []
    try:
        for flush in POOLS:
            workers.append(start_worker(bench, flush))
        for flush, pd in sdks.items():
            await wait_until_up(
                pd, [f"bench-logs-{flush}-{k}" for k, _, m, _ in paths if m == "low_latency"]
            )
        results: dict[str, Any] = {}
        for key, _, mode, runs in paths:
            say(f"- {key}: 1 warm-up + {runs} runs on each pool, alternating")
            samples: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            for i in range(1 + runs):
                for flush in ("on", "off") if i % 2 else ("off", "on"):
                    await asyncio.sleep(args.gap_s)
                    try:
                        measured = await sample(bench, ids[(flush, key)])
                    except TimeoutError:
                        measured = {"state": "TIMEOUT", "message": "not final in time"}
                    if i > 0:
                        samples[flush].append(measured)
            results[key] = {"mode": mode, **{f: summary(s) for f, s in samples.items()}}
            paired = [
                on["round_trip_s"] - off["round_trip_s"]
                for on, off in zip(samples["on"], samples["off"], strict=True)
                if on["state"] == off["state"] == "COMPLETED"
            ]
            results[key]["paired_difference_p50_s"] = statistics.median(paired) if paired else None
            on, off = results[key]["on"], results[key]["off"]
            if on.get("runs") and off.get("runs"):
                say(
                    f"  p50 on {on['p50_s'] * 1000:.0f} ms, off {off['p50_s'] * 1000:.0f} ms;"
                    f" complete at final: on {on['complete_at_final']}/{on['runs']},"
                    f" off {off['complete_at_final']}/{off['runs']}"
                )
        say(f"- the flush alone: {args.runs} times {LINES + 2} lines, one client kept open")
        results["flush_cost"] = await flush_cost(bench, args.runs)
        bench.results["logs_at_final"] = results
    finally:
        for worker in workers:
            bench.stop(worker)


def report_logs_at_final(results: dict[str, Any]) -> list[str]:
    """The section's Markdown lines (none when it did not run)."""
    rows = results.get("logs_at_final")
    if not rows:
        return []

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    lines = [
        "",
        f"## Logs complete at final: a pipeline printing {LINES} lines, flush before the final "
        "state on (default) / off (before the change)",
        "",
        "| path | flush | runs | p50 | p99 | all lines stored when seen final | lines then (p50) "
        "| all stored after (p50, max) | p50 cost per execution |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, row in rows.items():
        if key == "flush_cost":
            continue
        on, off = row.get("on", {}), row.get("off", {})
        cost = ms(on["p50_s"] - off["p50_s"]) if on.get("runs") and off.get("runs") else "-"
        for flush, data in (("on", on), ("off", off)):
            if not data.get("runs"):
                lines.append(f"| {key} | {flush} | 0 | failed | | | | | |")
                continue
            lines.append(
                f"| {key} | {flush} | {data['runs']} | {ms(data['p50_s'])} | {ms(data['p99_s'])} |"
                f" {data['complete_at_final']}/{data['runs']} | {data['lines_at_final_p50']:g}/{LINES} |"
                f" {ms(data['complete_after_p50_s'])}, {ms(data['complete_after_max_s'])} |"
                f" {cost if flush == 'on' else ''} |"
            )
    lines += [
        "",
        "Runs alternate between the two pools (same machine, same moment). Seen final: the "
        "run's final-state event reached the client; the logs are read right after the "
        "round trip's read-back. Cost per execution: p50 on - p50 off; the median of the "
        "paired differences (each `on` run minus the `off` run next to it): "
        + ", ".join(
            f"{key} {ms(row.get('paired_difference_p50_s'))}"
            for key, row in rows.items()
            if key != "flush_cost"
        )
        + ".",
    ]
    cost = rows.get("flush_cost")
    if cost:
        lines += [
            "",
            f"The flush by itself ({LINES + 2} lines, {cost['times']} times, from this process):"
            f" {ms(cost['runlogs_flush_p50_s'])} p50 with `RunLogs` (one POST /logs/ with a client"
            f" already open); {ms(cost['prefect_drain_p50_s'])} p50 with Prefect's own log worker"
            " (`APILogWorker.drain_all`), for reference.",
        ]
    return lines
