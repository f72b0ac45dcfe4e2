"""Ending background asyncio tasks without hanging on them or swallowing the caller's cancel.

For: `cancel_and_wait(*tasks)`, used where the gateway or the pod supervisor stops a task of its own
(a pod link's reader, the event listener, the upload sweeper, a pod's pending connect): it cancels
them and waits for them to end, at most `STOP_WAIT_S`. Their own end (cancelled, an exception) is
not raised: they were stopped on purpose. Before, each place did `task.cancel()` and then awaited
the task under `contextlib.suppress(asyncio.CancelledError, ...)`, which also swallowed a
cancellation of the caller itself (a timeout, a shutdown, pytest-timeout) while it waited, and
waited forever for a task that did not end when cancelled. Not for: tasks whose result is wanted
(await them), the pod's runs (`engine.pod`, which ends them with a state).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.logging import get_logger

logger = get_logger("prefect_pipedeploy.aio")

#: How long `cancel_and_wait` waits for the tasks to end once cancelled.
STOP_WAIT_S = 10.0


async def cancel_and_wait(*tasks: asyncio.Future[Any], wait_s: float = STOP_WAIT_S) -> None:
    """Cancel `tasks` and wait until they have ended, at most `wait_s` (a task still running
    then is left, and logged). Raises only a cancellation of the caller while it waits."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if running:
        _, left = await asyncio.wait(running, timeout=wait_s)
        for task in left:
            logger.warning(
                "A background task did not end within %g s of its cancel: %r", wait_s, task
            )
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # seen: it was stopped on purpose
