"""Wait for something that happens later: the one polling helper of the tests.

For: a condition a real server, worker or pod makes true after a while (a pod is up, a log
line arrived, a lease was released). On timeout the test fails with the last value seen, so a
failure says what was observed, not only that time ran out.
Not for: fixed sleeps (a test that must let time pass sleeps), nor waiting inside the product.

    deployment = eventually(lambda: sdk.get_deployment(name), 45, until=is_up)
    eventually(lambda: "ready" in log_path.read_text(), 30)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class EventuallyTimeout(AssertionError):
    """The condition did not hold in time; `last` is the last value seen."""

    def __init__(self, message: str, last: Any) -> None:
        super().__init__(message)
        self.last = last


def eventually(
    predicate: Callable[[], T],
    timeout_s: float,
    interval_s: float = 0.3,
    *,
    until: Callable[[T], object] | None = None,
    what: str = "",
) -> T:
    """Call `predicate` every `interval_s` until its value is truthy (or `until(value)` is), and
    return that value; after `timeout_s` raise `EventuallyTimeout` naming the last value seen.

    `predicate` is called at least once, and once more at the deadline. An exception it raises
    is not retried: it ends the wait at once (a process that died will not start later).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if until(value) if until is not None else value:
            return value
        if time.monotonic() >= deadline:
            name = getattr(predicate, "__name__", "<lambda>")
            described = what or (name if name != "<lambda>" else "the condition")
            raise EventuallyTimeout(
                f"{described} did not hold within {timeout_s:g} s; last value seen: {value!r}",
                value,
            )
        time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
