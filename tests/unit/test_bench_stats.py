"""`benchmarks.stats.percentile`: the benchmarks' one nearest-rank percentile rule."""

from __future__ import annotations

import pytest

from benchmarks.stats import percentile

HUNDRED = [float(v) for v in range(1, 101)]


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([5.0], 99, 5.0),
        ([3.0, 1.0, 2.0], 0, 1.0),  # unsorted input; q 0 is the minimum
        ([3.0, 1.0, 2.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),  # the lower middle value, not the mean of two
        ([1.0, 2.0, 3.0, 4.0], 51, 3.0),
        ([float(v) for v in range(1, 11)], 99, 10.0),  # 100 values or fewer: p99 is the max
        ([float(v) for v in range(1, 11)], 90, 9.0),
        ([float(v) for v in range(1, 11)], 91, 10.0),  # ceil, where rounding would give 9
        ([float(v) for v in range(1, 11)], 25, 3.0),  # 2.5 -> rank 3 (round() gave 2)
        (HUNDRED, 99, 99.0),
        (HUNDRED, 100, 100.0),
        (HUNDRED, 7, 7.0),  # 7 / 100 * 100 is 7.000000000000001: q * n / 100 keeps it 7
        ([float(v) for v in range(1, 201)], 99, 198.0),
    ],
)
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


def test_percentile_of_no_values_says_so() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 99)
