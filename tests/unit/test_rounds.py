"""`rounds.Announced`: the runs an event announced are looked for again, soon, by the rounds
that do not find them, and no more than ANNOUNCED_LOOKS rounds in all (a run scheduled for
later, or one whose state moved on, is not looked for forever). A real `Rounds` on a real event
loop: each look again is a round woken ANNOUNCED_RECHECK_S later."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from prefect_pipedeploy.worker.rounds import (
    ANNOUNCED_LOOKS,
    ANNOUNCED_RECHECK_S,
    Announced,
    Rounds,
)

pytestmark = pytest.mark.anyio

A, B = uuid.uuid4(), uuid.uuid4()


async def rounds_run(found_per_round: list[set[uuid.UUID]], announce: list[uuid.UUID]) -> int:
    """Announce `announce`, then run rounds (the n-th finds `found_per_round[n]`, later ones
    nothing) until none is woken within 20 x ANNOUNCED_RECHECK_S; how many rounds ran."""
    rounds = Rounds()
    announced = Announced(rounds)
    ran: list[int] = []

    async def step() -> None:
        found = found_per_round[len(ran)] if len(ran) < len(found_per_round) else set()
        ran.append(1)
        announced.after_round(found)

    async def failed(exc: Exception) -> None:
        raise exc

    for run_id in announce:
        announced.add(run_id)
    rounds.wake()
    loop = asyncio.create_task(rounds.run(3600, step, failed))
    try:
        while True:
            seen = len(ran)
            await asyncio.sleep(20 * ANNOUNCED_RECHECK_S)
            if len(ran) == seen:
                return len(ran)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


@pytest.mark.parametrize(
    ("found_per_round", "announce", "rounds"),
    [
        ([{A}], [A], 1),  # found by the round its event started
        ([set(), {A}], [A], 2),  # that round came too early: one round later
        ([set(), set(), {A}], [A], 3),
        ([], [A], ANNOUNCED_LOOKS),  # never found (scheduled for later): the looks stop
        ([{A}, set(), {B}], [A, B], 3),  # each run looked for until found
        ([], [], 1),  # nothing announced: the one round woken
    ],
)
async def test_an_announced_run_is_looked_for_again_until_found_or_out_of_looks(
    found_per_round: list[set[uuid.UUID]], announce: list[uuid.UUID], rounds: int
) -> None:
    assert await rounds_run(found_per_round, announce) == rounds
