"""A loop that works in rounds: when woken, or every poll interval as a fallback.

For: `Rounds`, what the worker's submit loop and its cancel loop share (events wake them, a
poll keeps them going when events are lost), and `Announced`, the runs an event woke such a loop
for that its round did not find yet. Not for: what a round does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn
from uuid import UUID

import anyio


class Rounds:
    """Run `step` whenever `wake` is called (or `wake_after`'s delay has passed), and at least
    every `poll_s`."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def wake(self) -> None:
        """Start the next round now instead of at the next poll."""
        self._event.set()

    def wake_after(self, delay_s: float) -> None:
        """Start a round `delay_s` from now, unless one starts before (from the event loop's
        thread)."""
        event = self._event
        asyncio.get_running_loop().call_later(delay_s, event.set)

    async def run(
        self,
        poll_s: float,
        step: Callable[[], Awaitable[object]],
        failed: Callable[[Exception], Awaitable[None]],
    ) -> NoReturn:
        """Round after round, for good; a round that raises is handed to `failed` (which may
        pause), then the next one comes."""
        while True:
            with anyio.move_on_after(poll_s):
                await self._event.wait()
            self._event = anyio.Event()
            try:
                await step()
            except Exception as exc:
                await failed(exc)


#: A run an event announced that the round did not find is looked for again this much later,
#: up to ANNOUNCED_LOOKS rounds in all: Prefect's server sends a state's event from inside the
#: transaction that writes the state, so the round the event starts can come before the write
#: is visible (seen: the run then waited for the next poll, `poll_seconds`, 2 s by default). A
#: run whose state moved on meanwhile, or one scheduled for later, is not found either: the
#: looks stop there.
ANNOUNCED_RECHECK_S = 0.05
ANNOUNCED_LOOKS = 4


class Announced:
    """The runs events announced to one loop (`Rounds`) that its rounds have not found yet."""

    def __init__(self, rounds: Rounds) -> None:
        self._rounds = rounds
        self._left: dict[UUID, int] = {}  # run -> rounds left to find it

    def add(self, run_id: UUID) -> None:
        """An event announced the run: the next rounds look for it."""
        self._left[run_id] = ANNOUNCED_LOOKS

    def after_round(self, found: set[UUID]) -> None:
        """A round found `found`: the announced runs it did not find are looked for again
        ANNOUNCED_RECHECK_S later, while they have rounds left."""
        for run_id, left in list(self._left.items()):
            if run_id in found or left <= 1:
                del self._left[run_id]
            else:
                self._left[run_id] = left - 1
        if self._left:
            self._rounds.wake_after(ANNOUNCED_RECHECK_S)
