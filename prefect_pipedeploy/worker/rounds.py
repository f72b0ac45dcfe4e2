"""A loop that works in rounds: when woken, or every poll interval as a fallback.

For: `Rounds`, what the worker's submit loop and its cancel loop share (events wake them, a
poll keeps them going when events are lost). Not for: what a round does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NoReturn

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
