"""Which pods a gateway may hand a call to straight (`gateway.direct.doors_of`)."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_pipedeploy.gateway.direct import Door, doors_of

DOOR = {"host": "127.0.0.1", "port": 4100, "key": "k1"}
OTHER = {"host": "127.0.0.1", "port": 4200, "key": "k2"}


def status(state: str, door: Any = DOOR) -> dict[str, Any]:
    return {"status": state, "direct": door, "worker": "w"}


@pytest.mark.parametrize(
    ("statuses", "parallelism", "expected"),
    [
        # one pod up: its door
        ([status("up")], 1, [Door("127.0.0.1", 4100, "k1")]),
        ([status("up")], 4, [Door("127.0.0.1", 4100, "k1")]),
        # not up (starting, failed, dead, stopped): none
        ([status("creation_pending")], 4, []),
        ([status("down_retrying")], 4, []),
        ([status("creation_failed")], 4, []),
        ([status("down")], 4, []),
        # a worker of an older version publishes no door; a malformed one is ignored
        ([status("up", door=None)], 4, []),
        ([status("up", door={"host": "127.0.0.1"})], 4, []),
        (["not a dict"], 4, []),
        # parallel mode: every pod up, each caps its own runs
        (
            [status("up"), status("up", door=OTHER), status("down_retrying", door=OTHER)],
            4,
            [Door("127.0.0.1", 4100, "k1"), Door("127.0.0.1", 4200, "k2")],
        ),
        # queue mode on several workers: one at a time is counted in Prefect across them, which
        # only the worker's path does
        ([status("up"), status("up", door=OTHER)], 1, []),
        # queue mode, one pod up and another worker's pod down: the one up
        ([status("up"), status("down_retrying", door=OTHER)], 1, [Door("127.0.0.1", 4100, "k1")]),
    ],
)
def test_doors_of(statuses: list[Any], parallelism: int, expected: list[Door]) -> None:
    assert doors_of(statuses, parallelism) == expected
