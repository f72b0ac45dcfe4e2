"""Prefect's server CLI, with four changes for the server the stack starts.

For: the local stack's Prefect server (`stack.start_prefect_server` runs `python -m
prefect_pipedeploy.serverproc server start --host H --port P ...`, the arguments of `prefect`).
It is Prefect's own CLI and server, with:
- Its long-lived objects kept out of the collector's full passes. `gc.freeze()` moves every
  object alive to the collector's permanent generation: once after the server's modules are
  imported, and again once the server answers its health check (the app, its routes and
  services built). Measured (benchmarks/README.md, the gateway section on SQLite): the server's
  full collections, a few a minute under load, took 130-380 ms each with everything tracked,
  and every call in flight waited for them (the 430-475 ms p99 outliers of the gateway round
  trip).
- On SQLite, its flow-run creates begun IMMEDIATE (`_compat_server.sqlite_creates_immediate`):
  concurrent creates wait for the writes before them instead of failing with 503. Measured
  (benchmarks/README.md): with 32 concurrent callers the worker path's creates met 3.6
  refusals each and the gateway accepted 3.9 calls/s that way (10.2 direct); begun
  IMMEDIATE, no request was refused, and with 4 creates at a time it accepted 11.3-11.8
  (direct) and 11.1-17.8 (worker path) calls/s over three runs.
- On PostgreSQL, its timestamps bound as stdlib datetimes in UTC
  (`_compat_server.postgres_timestamps_plain`), not as Pendulum ones, whose subtraction asyncpg's
  encoding pays about 65 us for each. Measured (benchmarks/README.md): 32 concurrent plain
  flow-run creates cost the server 23.7 ms each instead of 30.1.
- A new flow run's labels, its events' related resources and the deployment the concurrency
  rules look at read in one statement each (`_compat_server.lean_flow_run_reads`), not as whole
  deployments, flows and work queues. Measured (benchmarks/README.md, PostgreSQL): 9 of the 21
  statements of a deployment run's create; the gateway accepted 31-33 calls a second with the
  pod full instead of 23-26.
Not for: a server started any other way (`prefect server start` works the same, without
them).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import urllib.request

import prefect.server.api.server  # noqa: F401 - the server's modules: most long-lived objects
from prefect.cli import app

from prefect_pipedeploy._compat_server import (
    lean_flow_run_reads,
    postgres_timestamps_plain,
    sqlite_creates_immediate,
)

#: How long the second freeze waits for the server to answer.
SERVING_WAIT_S = 600.0


def health_url(argv: list[str]) -> str:
    """The health check of the server `argv` starts (`--host`, `--port`; Prefect's defaults)."""

    def option(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv[:-1] else default

    host = option("--host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{option('--port', '4200')}/api/health"


def freeze_once_serving(url: str, wait_s: float = SERVING_WAIT_S) -> bool:
    """`gc.freeze()` once `url` answers 200 (within `wait_s`); whether it did."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    gc.freeze()
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


if __name__ == "__main__":
    sqlite_creates_immediate()
    postgres_timestamps_plain()
    lean_flow_run_reads()
    gc.freeze()
    threading.Thread(target=freeze_once_serving, args=(health_url(sys.argv),), daemon=True).start()
    app()
