"""`benchmarks.endpoint_path`'s report: each accept row in the table and in words, the row
with the pod full first saying whether it stayed full through the burst."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.endpoint_path import accept_row, latency_row, report_endpoint_path

ANSWERED = [(202, 0.5, {}), (202, 1.5, {}), (429, 0.1, {})]


def results(full_throughout: bool) -> dict[str, Any]:
    full = accept_row("direct", 64, ANSWERED, 2.0, full_first=True)
    full["pod_full_throughout"] = full_throughout
    return {
        "floor": latency_row("floor: create a run Running + set it Completed", [0.1, 0.1]),
        "direct": {"accept": accept_row("direct", 64, ANSWERED, 4.0), "accept_full": full},
    }


@pytest.mark.parametrize(
    ("full_throughout", "said"), [(True, "the pod was full"), (False, "the pod was not full")]
)
def test_the_accept_rows_are_reported(full_throughout: bool, said: str) -> None:
    text = "\n".join(report_endpoint_path(results(full_throughout)))
    assert "| accept direct: 32 non-waiting callers while the pod is busy, each 202 | 2 |" in text
    assert "| accept direct: 32 non-waiting callers, every slot of the pod taken first" in text
    assert "32 concurrent callers, 3 non-waiting calls while the pod is busy: 0.5 accepted" in text
    assert "taken first: 1.0 accepted (202) per s, answers {202: 2, 429: 1}; " + said in text
