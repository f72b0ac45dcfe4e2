"""The log lines of the runs this process executes, stored before each run's final state.

For: `RunLogs`, the API log sink of an execution process (an elastic run, a pod). It keeps the
lines Prefect's API log handler prepares, sends them every `PREFECT_LOGGING_TO_API_BATCH_INTERVAL`
seconds from a thread of its own (live logs, as Prefect's log worker does), and sends what one
run has logged so far at once when asked (`flush`, `aflush`), with the caller's client and
waiting for that run's lines already on their way. The flow engine asks right before it sets a
run's final state, so an execution reported final (by Prefect, the SDK or the gateway) has every
line logged before that state stored. `process_run_logs()` installs it, once per process, when
the `flush_logs_before_final` setting is on (the default); `flush_run_logs` and
`fail_after_logs` store a run's lines when it ends outside the engine.
Not for: what a line says or where it is printed (Prefect's handlers); the lines Prefect's engine
logs after the final state ("Finished in state ...", state hooks): those go with the run's
end-of-run flush, a few milliseconds later.

Why not Prefect's own log worker (`APILogWorker`, Prefect 3.9.1): it cannot send one run's lines
on demand. Its flush (`drain_all`) stops it for every run of the process and starts a new one,
with a new API client, for the next line: about 50 ms per flush on 2 cores against about 13 ms
for one POST with a client already open; and a line logged by a parallel run while it stops is
dropped ("Cannot put items in a stopped service instance"). Lines a process pool's workers
forward to this process still go through Prefect's log worker, in its batches.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, SyncPrefectClient, get_client
from prefect.settings import (
    PREFECT_LOGGING_TO_API_BATCH_INTERVAL,
    PREFECT_LOGGING_TO_API_BATCH_SIZE,
    PREFECT_LOGGING_TO_API_MAX_LOG_SIZE,
)

from prefect_pipedeploy._compat import install_api_log_sink
from prefect_pipedeploy.prefect_api.runs import fail_run
from prefect_pipedeploy.settings import get_settings

#: How long a flush waits for the run's lines another sender has on their way.
IN_FLIGHT_WAIT_S = 10.0

Line = tuple[int, dict[str, Any]]  # (payload size in bytes, the LogCreate dict)


def max_batch_bytes() -> int:
    """The most bytes of lines one POST carries: Prefect's rule (`APILogWorker.max_batch_size`),
    the batch size less room for one line of the largest size."""
    return max(
        PREFECT_LOGGING_TO_API_BATCH_SIZE.value() - PREFECT_LOGGING_TO_API_MAX_LOG_SIZE.value() - 1,
        1,
    )


def batches(lines: list[Line], limit: int) -> Iterator[list[dict[str, Any]]]:
    """`lines` in order, cut into POST bodies of at most `limit` bytes (a line larger than the
    limit goes alone; each line counts one byte more, for its separator)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for line_size, line in lines:
        if batch and size + line_size + 1 > limit:
            yield batch
            batch, size = [], 0
        batch.append(line)
        size += line_size + 1
    if batch:
        yield batch


def _report(error: BaseException) -> None:
    # Prefect's log worker does the same; never through a logger or print, which would come
    # back here as a log line of the run.
    if sys.stderr:
        sys.stderr.write(f"--- Error logging to API ---\n{type(error).__name__}: {error}\n")


class RunLogs:
    """This process's API log lines, kept per run until sent (see the module docstring).

    Thread-safe: Prefect's handler calls `sink` from any thread; a `def` run flushes from its
    own thread with the sync client, an `async def` run from the event loop with the async one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str | None, list[Line]] = {}
        self._pending_bytes = 0
        # per run, one event per POST that carries some of its lines and has not answered yet
        self._sending: dict[str | None, list[threading.Event]] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # the sender thread sees the Prefect settings (the API URL) of whoever made this
        self._context = contextvars.copy_context()
        self._batch_bytes = max_batch_bytes()
        # `aflush`'s group commit, on the one event loop that uses it: the futures of the runs
        # whose flush waits for the next POST, and the POST in flight
        self._combining_loop: asyncio.AbstractEventLoop | None = None
        self._asked: dict[str, asyncio.Future[list[threading.Event]]] = {}
        self._posting: asyncio.Future[list[threading.Event]] | None = None

    # ---- taking lines -------------------------------------------------------------------------

    def sink(self, log: dict[str, Any]) -> None:
        """Keep one line (a dict from `APILogHandler.prepare`); called by Prefect's handler."""
        line = {key: value for key, value in log.items() if key != "__payload_size__"}
        size = int(log.get("__payload_size__") or len(str(line)))
        run = line.get("flow_run_id")
        key = str(run) if run is not None else None
        with self._lock:
            self._pending.setdefault(key, []).append((size, line))
            self._pending_bytes += size
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._context.copy().run,
                    args=(self._send_periodically,),
                    name="pipedeploy-run-logs",
                    daemon=True,
                )
                self._thread.start()
            full = self._pending_bytes >= self._batch_bytes
        if full:
            self._wake.set()

    def _take(
        self, keys: list[str | None] | None
    ) -> tuple[list[Line], list[str | None], list[threading.Event], threading.Event]:
        """Take the pending lines of `keys` (None: every run); returns them, the keys taken,
        the POSTs already carrying lines of `keys` (to wait for) and this POST's event."""
        done = threading.Event()
        with self._lock:
            wanted = list(self._pending) if keys is None else keys
            waits = [event for key in wanted for event in self._sending.get(key, ())]
            taken = [key for key in wanted if key in self._pending]
            lines: list[Line] = []
            for key in taken:
                lines.extend(self._pending.pop(key))
                self._sending.setdefault(key, []).append(done)
            self._pending_bytes -= sum(size for size, _ in lines)
        return lines, taken, waits, done

    def _sent(self, keys: list[str | None], done: threading.Event) -> None:
        with self._lock:
            for key in keys:
                events = self._sending.get(key, [])
                if done in events:
                    events.remove(done)
                if not events:
                    self._sending.pop(key, None)
        done.set()

    # ---- sending ------------------------------------------------------------------------------

    def _post(self, client: SyncPrefectClient, lines: list[Line]) -> None:
        for batch in batches(lines, self._batch_bytes):
            try:
                client.create_logs(batch)
            except Exception as exc:  # a lost batch must not fail the run, as in Prefect
                _report(exc)

    async def _apost(self, client: PrefectClient, lines: list[Line]) -> None:
        for batch in batches(lines, self._batch_bytes):
            try:
                await client.create_logs(batch)
            except Exception as exc:
                _report(exc)

    def flush(self, client: SyncPrefectClient, flow_run_id: UUID | None) -> None:
        """Store every line run `flow_run_id` has logged so far (None: every run's), with
        `client`; returns when they are stored or could not be. Never raises."""
        self._flush(client, None if flow_run_id is None else [str(flow_run_id)], wait=True)

    def _flush(self, client: SyncPrefectClient, keys: list[str | None] | None, wait: bool) -> None:
        lines, taken, waits, done = self._take(keys)
        try:
            if lines:
                self._post(client, lines)
        finally:
            self._sent(taken, done)
        for event in waits if wait else ():
            event.wait(IN_FLIGHT_WAIT_S)

    async def aflush(self, client: PrefectClient, flow_run_id: UUID) -> None:
        """`flush` from an event loop, with the async client.

        Flushes asked for while another is on its way go together (a group commit): the first
        to find no POST of this kind in flight sends the lines of every run asked for so far,
        in one POST, and the others wait for it. A parallel pod whose runs end at once stores
        their lines in a few writes instead of one (two, with the end-of-run flush) per run:
        on SQLite every write waits for the one before (issue 14)."""
        key = str(flow_run_id)
        loop = asyncio.get_running_loop()
        if self._combining_loop is None or self._combining_loop.is_closed():
            self._combining_loop, self._asked, self._posting = loop, {}, None
        if self._combining_loop is not loop:  # another event loop of this process: alone
            await self._wait_for(await self._post_now(client, [key]))
            return
        mine = self._asked.get(key)
        if mine is None:
            mine = self._asked[key] = loop.create_future()
        while not mine.done():
            posting = self._posting
            # a POST that has ended may not be settled yet (its callback is queued): awaiting
            # it would not yield, so this loop would spin; lead the next POST instead
            if posting is None or posting.done():
                await self._post_asked(client)
            else:
                await asyncio.shield(posting)  # then lead the next POST if none has
        await self._wait_for(mine.result())

    async def _post_now(self, client: PrefectClient, keys: list[str]) -> list[threading.Event]:
        """POST the pending lines of `keys`; returns the POSTs already carrying lines of
        theirs (another sender's), to wait for."""
        lines, taken, waits, done = self._take(list(keys))
        try:
            if lines:
                await self._apost(client, lines)
        finally:
            self._sent(taken, done)
        return waits

    @staticmethod
    async def _wait_for(waits: list[threading.Event]) -> None:
        for event in waits:
            if not event.is_set():
                await asyncio.to_thread(event.wait, IN_FLIGHT_WAIT_S)

    async def _post_asked(self, client: PrefectClient) -> None:
        """One POST with the lines of every run whose flush was asked for (`aflush`); each
        asker's future gets the POSTs already carrying lines of its run, to wait for. The POST
        is shielded: a cancelled asker does not cancel the lines of the others."""
        asked, self._asked = self._asked, {}
        self._posting = posting = asyncio.ensure_future(self._post_now(client, list(asked)))
        # settled before any waiter resumes (its callback comes later), even if this asker
        # is cancelled meanwhile
        posting.add_done_callback(lambda _: self._settle(posting, asked))
        await asyncio.shield(posting)

    def _settle(
        self, posting: asyncio.Future[list[threading.Event]], asked: dict[str, asyncio.Future[Any]]
    ) -> None:
        if self._posting is posting:
            self._posting = None
        waits = [] if posting.cancelled() or posting.exception() else posting.result()
        for future in asked.values():
            if not future.done():
                future.set_result(waits)

    def flush_everything(self) -> None:
        """Store every pending line of every run with a client of its own (at exit, before a
        pod exits on purpose). Never raises."""
        with self._lock:
            if not self._pending and not self._sending:
                return
        try:
            with get_client(sync_client=True) as client:
                self.flush(client, None)
        except Exception as exc:
            _report(exc)

    def _send_periodically(self) -> None:
        """The thread that sends every run's lines each batch interval (or when they fill a
        batch), as Prefect's log worker does, so a long run's logs show while it runs."""
        try:
            with get_client(sync_client=True) as client:
                while True:
                    self._wake.wait(PREFECT_LOGGING_TO_API_BATCH_INTERVAL.value())
                    self._wake.clear()
                    self._flush(client, None, wait=False)
        except Exception as exc:  # the next line starts a new sender
            _report(exc)
            with self._lock:
                self._thread = None

    def _reset_after_fork(self) -> None:
        """In a forked child: no sender thread, nothing pending (the parent sends its own)."""
        self._lock = threading.Lock()
        self._pending, self._pending_bytes, self._sending = {}, 0, {}
        self._wake = threading.Event()
        self._thread = None
        self._combining_loop, self._asked, self._posting = None, {}, None


_process_run_logs: RunLogs | None = None
_decided = False
_install_lock = threading.Lock()


def process_run_logs() -> RunLogs | None:
    """This process's `RunLogs`, installed as Prefect's API log sink on the first call; None
    when the `flush_logs_before_final` setting is off (then Prefect's log worker sends the
    lines in its 2 s batches, as before). The setting is read once per process."""
    global _process_run_logs, _decided
    if _decided:
        return _process_run_logs
    with _install_lock:
        if not _decided:
            if get_settings().flush_logs_before_final:
                run_logs = RunLogs()
                install_api_log_sink(run_logs.sink)
                atexit.register(run_logs.flush_everything)
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(after_in_child=run_logs._reset_after_fork)
                _process_run_logs = run_logs
            _decided = True
    return _process_run_logs


def installed_run_logs() -> RunLogs | None:
    """The process's `RunLogs` if `process_run_logs()` installed one, without installing."""
    return _process_run_logs


async def flush_run_logs(client: PrefectClient, flow_run_id: UUID) -> None:
    """Store what run `flow_run_id` has logged so far, with `client` (at the run's end: the
    lines Prefect's engine logs after the final state). Nothing to send costs nothing; without
    an installed `RunLogs` it does nothing. Never raises."""
    run_logs = installed_run_logs()
    if run_logs is not None:
        await run_logs.aflush(client, flow_run_id)


def flush_all_run_logs() -> None:
    """Store every pending line of this process, blocking (before it exits on purpose with
    `os._exit`, which skips the at-exit flush). Never raises."""
    run_logs = installed_run_logs()
    if run_logs is not None:
        run_logs.flush_everything()


async def fail_after_logs(
    client: PrefectClient, flow_run_id: UUID, message: str, *, over_crash: bool = False
) -> bool:
    """`prefect_api.runs.fail_run`, once the lines the run has logged are stored: a run ended
    outside the engine (its inputs, its loading, its timeout) has its logs complete at final."""
    await flush_run_logs(client, flow_run_id)
    return await fail_run(client, flow_run_id, message, over_crash=over_crash)
