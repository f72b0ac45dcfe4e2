"""Trivial pipelines the benchmarks deploy: the work is nothing, so what is measured is the path.

For: `benchmarks/latency.py`, which deploys these to a pipedeploy pool, a Prefect process pool
and `flow.serve()`, and `benchmarks/gateway_burst.py` (`bench_caller`). Not for: the tests
(tests/support/pipelines.py) or the demo (prefect_pipedeploy/examples/demo.py).

    python benchmarks/flows/bench_flows.py serve NAME    # flow.serve() of bench_noop_sync
"""

from __future__ import annotations

import asyncio
import sys

from prefect import flow


@flow
def bench_noop_sync() -> dict:
    """A `def` pipeline that does nothing."""
    return {"ok": True}


@flow
async def bench_noop_async() -> dict:
    """An `async def` pipeline that does nothing."""
    return {"ok": True}


@flow
async def bench_sleep_async(sleep_s: float = 0.5) -> dict:
    """An `async def` pipeline that sleeps: the throughput benchmark's unit of work."""
    await asyncio.sleep(sleep_s)
    return {"slept_s": sleep_s}


@flow
def bench_caller(caller: str = "") -> dict:
    """A `def` pipeline that names its caller (`gateway_burst.py` finds each call's run so)."""
    return {"caller": caller}


@flow(log_prints=True)
def bench_print_sync(n: int = 14, tag: str = "bench") -> dict:
    """A `def` pipeline that prints `n` numbered lines (the logs-at-final section)."""
    for i in range(n):
        print(f"{tag} line {i:03d}")
    return {"lines": n}


@flow(log_prints=True)
async def bench_print_async(n: int = 14, tag: str = "bench") -> dict:
    """An `async def` pipeline that prints `n` numbered lines."""
    for i in range(n):
        print(f"{tag} line {i:03d}")
    return {"lines": n}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        sys.exit("usage: python benchmarks/flows/bench_flows.py serve DEPLOYMENT_NAME")
    # The poll interval comes from PREFECT_RUNNER_POLL_FREQUENCY (an integer; 1 is its floor).
    bench_noop_sync.serve(name=sys.argv[2])
