"""The wrong-token limiter's `forget`: a token counted as wrong that proved right (it was just
rotated) is taken back, and only that one."""

from __future__ import annotations

import pytest

from prefect_pipedeploy.gateway.waiting import BadTokenLimiter


@pytest.mark.parametrize(
    ("recorded", "forgotten", "limit", "blocked"),
    [
        ([1.0, 2.0, 3.0], [3.0], 3, False),  # the third was a rotated token: two wrong ones
        ([1.0, 2.0, 3.0], [], 3, True),
        ([1.0, 2.0, 3.0], [9.0], 3, True),  # nothing recorded then: nothing taken back
        ([1.0], [1.0, 1.0], 1, False),  # twice: no error
        ([2.0, 2.0], [2.0], 2, False),  # two at one instant: one taken back
    ],
)
def test_forget_takes_back_one_recorded_wrong_token(
    recorded: list[float], forgotten: list[float], limit: int, blocked: bool
) -> None:
    limiter = BadTokenLimiter()
    for at in recorded:
        limiter.record("client", at)
    for at in forgotten:
        limiter.forget("client", at)
    assert (limiter.retry_after("client", 10.0, limit) is not None) is blocked
    assert limiter.retry_after("another", 10.0, 1) is None
