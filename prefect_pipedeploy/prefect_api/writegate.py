"""One process's creates kept apart from its other writes, once the server refuses creates.

For: `install_write_gate` (a low-latency pod installs it on its two Prefect clients when it
starts), `WriteGate` and `request_kind` (the rule, tested with tables). Not for: retrying a
refused write (`busy.retry_busy`), other processes' writes (no process sees another's).

A Prefect server on SQLite refuses a create (503) whenever another write commits between the
create's first read and its insert (SQLITE_BUSY_SNAPSHOT; Prefect's create reads the flow,
deployment, queue and pool first). A busy parallel pod is mostly refused by its own writes: the
states, logs and records of the runs it executes commit while its next create reads (issue 14:
three creates in four were refused at least once). Once a create of this process has been
refused, the gate is on for the process's life: a create waits until the process's writes in
flight have been answered, and writes asked for meanwhile wait until the create has been
answered (creates first, then the writes together; reads never wait). Each write waits for at
most one create, each create for the writes already in flight. A server that never refuses a
create (PostgreSQL) never turns the gate on: its writes go as they come.

Measured (benchmarks/README.md, SQLite, the gateway section): a parallel pod under 16 waiting
callers 6.5 -> 7.8 executions/s, 32 non-waiting callers accepted 7.0 -> 9.6 calls/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from enum import Enum
from typing import TYPE_CHECKING

import httpx
from prefect.logging import get_logger

from prefect_pipedeploy._compat import wrap_transports

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient, SyncPrefectClient

logger = get_logger("prefect_pipedeploy.prefect_api.writegate")


class Kind(Enum):
    CREATE = "create"
    WRITE = "write"


#: POST routes of Prefect's API that only read.
READ_SUFFIXES = ("/filter", "/count", "/paginate", "/history")


def request_kind(method: str, path: str) -> Kind | None:
    """What a request to Prefect's API is to the gate: a create of a flow run (either route), another
    write, or None (a read, which never waits)."""
    if method in ("GET", "HEAD", "OPTIONS") or path.endswith(READ_SUFFIXES) or "/ui/" in path:
        return None
    if method == "POST" and (path.endswith("/flow_runs/") or path.endswith("/create_flow_run")):
        return Kind.CREATE
    return Kind.WRITE


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WriteGate:
    """Creates one at a time, with no other write in flight; other writes together, while no
    create is in flight or waiting. Thread-safe: an event loop's requests wait on futures, a
    thread's (a `def` pipeline's engine) block on a condition."""

    def __init__(self) -> None:
        self.on = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._writes = 0
        self._creating = False
        self._creates_waiting = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def turn_on(self) -> None:
        if not self.on:
            self.on = True
            logger.info(
                "The Prefect server refused a create while other writes committed (a busy "
                "SQLite database): this process's creates now wait for its writes in flight, "
                "and its writes for its creates",
                extra={"action": "write_gate_on"},
            )

    def _may(self, kind: Kind) -> bool:
        if kind is Kind.CREATE:
            return not self._creating and self._writes == 0
        return not self._creating and self._creates_waiting == 0

    def _take(self, kind: Kind) -> None:
        if kind is Kind.CREATE:
            self._creating = True
        else:
            self._writes += 1

    def _wake(self) -> None:  # with the lock held
        self._changed.notify_all()
        for loop, future in self._waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    def release(self, kind: Kind) -> None:
        with self._lock:
            if kind is Kind.CREATE:
                self._creating = False
            else:
                self._writes -= 1
            self._wake()

    def _stop_waiting(self, kind: Kind) -> None:  # with the lock held
        if kind is Kind.CREATE:
            self._creates_waiting -= 1
            self._wake()  # the writes it held back may go, if it gave up

    def enter_sync(self, kind: Kind) -> None:
        """Block this thread until the request may go; then it holds its place until
        `release`."""
        with self._lock:
            if kind is Kind.CREATE:
                self._creates_waiting += 1
            try:
                self._changed.wait_for(lambda: self._may(kind))
                self._take(kind)
            finally:
                self._stop_waiting(kind)

    async def enter(self, kind: Kind) -> None:
        """`enter_sync` for a request of this event loop (cancellable while it waits)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if kind is Kind.CREATE:
                self._creates_waiting += 1
        try:
            while True:
                with self._lock:
                    if self._may(kind):
                        self._take(kind)
                        return
                    waiter = (loop, loop.create_future())
                    self._waiters.add(waiter)
                try:
                    await waiter[1]
                finally:
                    with self._lock:
                        self._waiters.discard(waiter)
        finally:
            with self._lock:
                self._stop_waiting(kind)


class GatedAsyncTransport(httpx.AsyncBaseTransport):
    """An async client's transport, its writes through `gate` once it is on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, gate: WriteGate) -> None:
        self.inner = inner
        self.gate = gate

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        kind = request_kind(request.method, request.url.path)
        if kind is None or not self.gate.on:
            response = await self.inner.handle_async_request(request)
        else:
            await self.gate.enter(kind)
            try:  # answered: the server committed (or rolled back) the write
                response = await self.inner.handle_async_request(request)
            finally:
                self.gate.release(kind)
        if kind is Kind.CREATE and response.status_code == 503:
            self.gate.turn_on()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class GatedTransport(httpx.BaseTransport):
    """`GatedAsyncTransport` for a sync client, used from threads."""

    def __init__(self, inner: httpx.BaseTransport, gate: WriteGate) -> None:
        self.inner = inner
        self.gate = gate

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = request_kind(request.method, request.url.path)
        if kind is None or not self.gate.on:
            response = self.inner.handle_request(request)
        else:
            self.gate.enter_sync(kind)
            try:
                response = self.inner.handle_request(request)
            finally:
                self.gate.release(kind)
        if kind is Kind.CREATE and response.status_code == 503:
            self.gate.turn_on()
        return response

    def close(self) -> None:
        self.inner.close()


def install_write_gate(
    client: PrefectClient, sync_client: SyncPrefectClient, mode: str = "auto"
) -> WriteGate | None:
    """One gate for both clients of this process: off until the server refuses a create
    ("auto"), on from the start ("on"), or none ("off"; the `pod_write_gate` setting)."""
    if mode == "off":
        return None
    gate = WriteGate()
    gate.on = mode == "on"
    wrap_transports(
        client,
        sync_client,
        lambda inner: GatedAsyncTransport(inner, gate),
        lambda inner: GatedTransport(inner, gate),
    )
    return gate
