"""The tests' polling helper (tests/support/eventually.py): what it returns, how it fails."""

from __future__ import annotations

import itertools

import pytest

from tests.support.eventually import EventuallyTimeout, eventually


def test_returns_the_first_truthy_value() -> None:
    values = iter([0, [], "", ["found"]])
    assert eventually(lambda: next(values), 5, 0.001) == ["found"]


def test_until_decides_and_the_value_is_returned() -> None:
    counts = itertools.count()
    assert eventually(lambda: {"n": next(counts)}, 5, 0.001, until=lambda v: v["n"] == 3) == {
        "n": 3
    }


def test_timeout_names_the_condition_and_the_last_value_seen() -> None:
    counts = itertools.count()
    with pytest.raises(EventuallyTimeout) as caught:
        eventually(
            lambda: {"status": "pending", "n": next(counts)},
            0.05,
            0.01,
            until=lambda v: v["status"] == "up",
            what="deployment 'x' up",
        )
    message = str(caught.value)
    assert message.startswith("deployment 'x' up did not hold within 0.05 s; last value seen:")
    assert "'status': 'pending'" in message
    assert caught.value.last["n"] >= 2  # polled more than once, and once more at the deadline
    assert isinstance(caught.value, AssertionError)  # a test failure, not an error


def test_a_named_predicate_names_itself() -> None:
    def pod_ready() -> bool:
        return False

    with pytest.raises(EventuallyTimeout, match=r"^pod_ready did not hold .*: False$"):
        eventually(pod_ready, 0, 0.01)


def test_an_exception_ends_the_wait_at_once() -> None:
    calls = itertools.count()

    def exited() -> bool:
        next(calls)
        raise RuntimeError("the worker exited")

    with pytest.raises(RuntimeError, match="exited"):
        eventually(exited, 30, 0.01)
    assert next(calls) == 1
