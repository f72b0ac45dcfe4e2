"""Benchmark: the gateway under a burst of calls, and callers that give up.

For: the back-pressure figures of issue 12, against a stack this script starts and stops itself
(a Prefect server on SQLite in a temporary home, one `pipedeploy worker`, one `pipedeploy
gateway`, all on 127.0.0.1):
1. burst: N concurrent non-waiting calls (`?wait_for_completion=false`) of an elastic endpoint:
   how each was answered (202, 429 with Retry-After, other), and how long the answers took.
2. impatient callers: M concurrent waiting calls whose client gives up after T seconds: how many
   gave up, how many executions were created, and how many of those were created after their
   caller had already gone (each call names itself in an input, so its run is found).
Not for: timed tests (the test suite never asserts on speed), latency of one execution
(`latency.py`).

    .venv/bin/python benchmarks/gateway_burst.py                  # 30 + 12 calls, about 3 minutes
    .venv/bin/python benchmarks/gateway_burst.py --calls 50 --impatient 20 --client-timeout 2
    .venv/bin/python benchmarks/gateway_burst.py --gateway-env PREFECT_INTEGRATIONS_PIPEDEPLOY_X=1

Results: a Markdown report on stdout, progress on stderr, and
benchmarks/results/gateway-burst-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOWS_FILE = ROOT / "benchmarks" / "flows" / "bench_flows.py"
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

# Settings must be in place before Prefect is imported anywhere in this process.
HOME = Path(tempfile.mkdtemp(prefix="pipedeploy-burst-"))
os.environ["PREFECT_HOME"] = str(HOME / "client")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_INTEGRATIONS_PIPEDEPLOY_HOME"] = str(HOME / "pipedeploy")

import httpx  # noqa: E402
from prefect.client.orchestration import PrefectClient  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    DeploymentFilter,
    DeploymentFilterId,
)

from prefect_pipedeploy import PipeDeploy  # noqa: E402
from prefect_pipedeploy.stack import (  # noqa: E402
    ChildProcess,
    free_port,
    start_child,
    start_prefect_server,
    wait_for_http,
)

POOL = "burst"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def say(message: str = "") -> None:
    print(message, file=sys.stderr, flush=True)


def seconds(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return f"{ordered[index]:.1f} s"


async def call(
    http: httpx.AsyncClient, url: str, token: str, caller: str, wait: bool, timeout_s: float
) -> dict[str, Any]:
    """One endpoint call; what was answered, when, or when its caller gave up."""
    started = time.time()
    params = {} if wait else {"wait_for_completion": "false"}
    try:
        response = await http.post(
            url,
            params=params,
            json={"caller": caller},
            headers={"Authorization": f"EndpointToken {token}"},
            timeout=timeout_s,
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        return {
            "caller": caller,
            "status": "gave up",
            "at": time.time(),
            "s": time.time() - started,
        }
    except httpx.HTTPError as exc:
        return {"caller": caller, "status": f"error {type(exc).__name__}", "at": time.time()}
    return {
        "caller": caller,
        "status": response.status_code,
        "retry_after": response.headers.get("retry-after"),
        "message": response.json().get("message") if response.status_code >= 300 else None,
        "at": time.time(),
        "s": time.time() - started,
    }


async def runs_of(client: PrefectClient, deployment_id: uuid.UUID) -> list[Any]:
    return await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        limit=200,
    )


async def wait_all_final(
    client: PrefectClient, deployment_id: uuid.UUID, timeout_s: float
) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        runs = await runs_of(client, deployment_id)
        if all(r.state and r.state.type.value in FINAL for r in runs):
            return runs
        if time.monotonic() > deadline:
            return runs
        await asyncio.sleep(1.0)


async def burst(args: argparse.Namespace, gateway: str, api_url: str, pd: PipeDeploy) -> dict:
    name = f"burst-{uuid.uuid4().hex[:6]}"
    created = await pd.acreate_deployment(
        f"{FLOWS_FILE}:bench_caller", name, mode="elastic", ram_request="128MiB", max_retries=0
    )
    url = f"{gateway}/endpoints/{created['endpoint_url_path']}"
    say(f"- burst: {args.calls} concurrent non-waiting calls")
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=500)) as http:
        answers = await asyncio.gather(
            *(
                call(http, url, created["endpoint_token"], f"b{i}", False, args.burst_timeout)
                for i in range(args.calls)
            )
        )
    async with PrefectClient(api_url) as client:
        runs = await wait_all_final(client, uuid.UUID(created["id"]), args.drain_timeout)
    statuses = Counter(str(a["status"]) for a in answers)
    by_status: dict[str, list[float]] = {}
    for answer in answers:
        if "s" in answer:
            by_status.setdefault(str(answer["status"]), []).append(answer["s"])
    result = {
        "calls": args.calls,
        "statuses": dict(statuses),
        "latency_by_status": {
            status: {
                "p50": statistics.median(values),
                "max": max(values),
            }
            for status, values in by_status.items()
        },
        "429_without_retry_after": sum(
            1 for a in answers if a["status"] == 429 and not a.get("retry_after")
        ),
        "retry_after_values": sorted({a["retry_after"] for a in answers if a.get("retry_after")}),
        "runs_created": len(runs),
        "runs_final": Counter(r.state.type.value for r in runs if r.state),
        "answers": answers,
    }
    say(f"  {dict(statuses)}; {len(runs)} runs created")
    return result


async def impatient(args: argparse.Namespace, gateway: str, api_url: str, pd: PipeDeploy) -> dict:
    name = f"impatient-{uuid.uuid4().hex[:6]}"
    created = await pd.acreate_deployment(
        f"{FLOWS_FILE}:bench_caller", name, mode="elastic", ram_request="128MiB", max_retries=0
    )
    url = f"{gateway}/endpoints/{created['endpoint_url_path']}"
    say(f"- impatient: {args.impatient} waiting calls, client timeout {args.client_timeout} s")
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=500)) as http:
        answers = await asyncio.gather(
            *(
                call(http, url, created["endpoint_token"], f"i{i}", True, args.client_timeout)
                for i in range(args.impatient)
            )
        )
    async with PrefectClient(api_url) as client:
        runs = await wait_all_final(client, uuid.UUID(created["id"]), args.drain_timeout)
    gone_at = {a["caller"]: a["at"] for a in answers if a["status"] == "gave up"}
    made_for_gone = [
        r
        for r in runs
        if (r.parameters or {}).get("caller") in gone_at
        and r.created is not None
        and r.created.timestamp() > gone_at[r.parameters["caller"]]
    ]
    result = {
        "calls": args.impatient,
        "client_timeout_s": args.client_timeout,
        "statuses": dict(Counter(str(a["status"]) for a in answers)),
        "gave_up": len(gone_at),
        "runs_created": len(runs),
        "runs_created_after_caller_gave_up": len(made_for_gone),
        "runs_final": Counter(r.state.type.value for r in runs if r.state),
        "answers": answers,
    }
    say(
        f"  {len(gone_at)} gave up; {len(runs)} runs created, "
        f"{len(made_for_gone)} after their caller had gone"
    )
    return result


def report(results: dict[str, Any]) -> str:
    b, i = results["burst"], results["impatient"]
    lines = [
        f"# Gateway burst ({results['started']}, {results['gateway_env'] or 'default settings'})",
        "",
        f"## {b['calls']} concurrent non-waiting calls",
        "",
        "| answer | count | p50 | max |",
        "| --- | --- | --- | --- |",
    ]
    for status, count in sorted(b["statuses"].items()):
        latency = b["latency_by_status"].get(status, {})
        p50 = f"{latency['p50']:.1f} s" if latency else "-"
        top = f"{latency['max']:.1f} s" if latency else "-"
        lines.append(f"| {status} | {count} | {p50} | {top} |")
    lines += [
        "",
        f"429 without Retry-After: {b['429_without_retry_after']}; Retry-After values: "
        f"{', '.join(b['retry_after_values']) or '-'}; executions created: {b['runs_created']} "
        f"({dict(b['runs_final'])})",
        "",
        f"## {i['calls']} waiting calls, client timeout {i['client_timeout_s']} s",
        "",
        f"answers: {i['statuses']}; callers that gave up: {i['gave_up']}; executions created: "
        f"{i['runs_created']} ({dict(i['runs_final'])}); created after their caller had gone: "
        f"{i['runs_created_after_caller_gave_up']}",
    ]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    children: list[ChildProcess] = []
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gateway_env": " ".join(args.gateway_env),
        "options": vars(args),
        "load_before": os.getloadavg(),
    }
    try:
        server, api_url = start_prefect_server(HOME / "server", ui=False)
        children.append(server)
        os.environ["PREFECT_API_URL"] = api_url
        env = {**os.environ, "PREFECT_API_URL": api_url}
        port = free_port()
        gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
        gateway = start_child(
            "gateway",
            [sys.executable, "-m", "prefect_pipedeploy.cli", "gateway", "--pool", POOL]
            + ["--port", str(port)],
            HOME / "logs" / "gateway.log",
            env={**env, **gateway_env},
        )
        children.append(gateway)
        worker = start_child(
            "worker",
            [sys.executable, "-m", "prefect_pipedeploy.cli", "worker", "--pool", POOL],
            HOME / "logs" / "worker.log",
            env=env,
        )
        children.append(worker)
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", 90, gateway)
        pd = PipeDeploy(api_url=api_url, work_pool_name=POOL)
        results["burst"] = await burst(args, url, api_url, pd)
        results["impatient"] = await impatient(args, url, api_url, pd)
        results["load_after"] = os.getloadavg()
    finally:
        for child in reversed(children):
            child.stop()
    print(report(results))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = RESULTS_DIR / f"gateway-burst-{stamp}.json"
    target.write_text(json.dumps(results, indent=2, default=str))
    say(f"results: {target}; logs: {HOME / 'logs'}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=30, help="concurrent non-waiting calls")
    parser.add_argument("--impatient", type=int, default=12, help="concurrent waiting calls")
    parser.add_argument("--client-timeout", type=float, default=3.0, help="their client timeout")
    parser.add_argument("--burst-timeout", type=float, default=120.0, help="burst client timeout")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="wait for runs to end")
    parser.add_argument(
        "--gateway-env", nargs="*", default=[], help="NAME=VALUE settings of the gateway"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
