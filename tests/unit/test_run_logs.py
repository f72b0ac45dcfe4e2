"""How `engine.runlogs` cuts a run's log lines into POST bodies (pure, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_pipedeploy.engine.runlogs import batches


def lines(*sizes: int) -> list[tuple[int, dict[str, Any]]]:
    return [(size, {"message": f"line {i}"}) for i, size in enumerate(sizes)]


def numbers(cut: list[list[dict[str, Any]]]) -> list[list[int]]:
    return [[int(line["message"].split()[1]) for line in batch] for batch in cut]


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        ((), 100, []),
        ((10,), 100, [[0]]),
        # each line counts one byte more (its separator): 3 x 33 = 99 fits, a 4th does not
        ((32, 32, 32, 32), 100, [[0, 1, 2], [3]]),
        ((49, 49), 100, [[0, 1]]),
        ((50, 49), 100, [[0], [1]]),
        # a line larger than the limit goes alone, never dropped, order kept
        ((10, 500, 10), 100, [[0], [1], [2]]),
        ((500,), 100, [[0]]),
        ((1, 1, 1, 1, 1), 4, [[0, 1], [2, 3], [4]]),
    ],
)
def test_lines_are_cut_into_bodies_within_the_limit_in_order(
    sizes: tuple[int, ...], limit: int, expected: list[list[int]]
) -> None:
    assert numbers(list(batches(lines(*sizes), limit))) == expected
