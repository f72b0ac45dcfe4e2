"""The benchmarks' one percentile rule, shared by every section that reports a p99.

For: `latency.py`, `endpoint_path.py` and `logs_at_final.py` (imported by each; it imports none
of them, nor Prefect). Not for: a run on its own, or anything the test suite times.
"""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the smallest value with at least q % of the values at or below
    it): with 100 values or fewer, p99 is the maximum. Raises `ValueError` on no values."""
    if not values:
        raise ValueError("percentile of no values: pass at least one sample")
    ordered = sorted(values)
    # q * n / 100, not q / 100 * n: 7 / 100 * 100 is 7.000000000000001, whose ceiling is 8.
    return ordered[max(0, math.ceil(q * len(ordered) / 100) - 1)]
