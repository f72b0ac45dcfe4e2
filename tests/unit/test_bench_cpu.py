"""`benchmarks.cpu`: the CPU each part of the stack used over a row, in words, and measured on
real processes (a child that burns CPU counts for its parent's part, not for the benchmark's)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from benchmarks.cpu import CpuMeter, add_used, cpu_line, tree_cpu_s
from benchmarks.endpoint_path import load_lines

CORES = psutil.cpu_count() or 1


@pytest.mark.parametrize(
    ("used", "count", "said"),
    [
        (
            {"prefect-server": 1.9, "postgresql": 0.2, "machine": 2.4, "wall": 2.0},
            20,
            "CPU per execution: prefect-server 95 ms (95 % of a core), postgresql 10 ms "
            f"(10 % of a core); the machine's {CORES} cores were {120 // CORES} % busy",
        ),
        (
            {"gateway direct": 0.1, "prefect-server": 0.5, "machine": 0.6, "wall": 1.0},
            10,
            "CPU per execution: prefect-server 50 ms (50 % of a core), gateway direct 10 ms",
        ),
        (
            {"prefect-server": 1.0, "gateway worker path": 0.005, "machine": 1.0, "wall": 1.0},
            10,
            "CPU per execution: prefect-server 100 ms (100 % of a core); the machine's",
        ),
        ({"prefect-server": 1.0, "machine": 1.0, "wall": 1.0}, 0, "CPU per execution: no"),
        ({}, 5, "CPU per execution: no executions"),
    ],
)
def test_the_cpu_line_names_the_busiest_part_first(
    used: dict[str, float], count: int, said: str
) -> None:
    assert cpu_line(used, count, "execution").startswith(said)


def test_rows_measured_in_parts_add_up() -> None:
    assert add_used({"a": 1.0, "wall": 2.0}, {"a": 0.5, "b": 1.0, "wall": 1.0}) == {
        "a": 1.5,
        "b": 1.0,
        "wall": 3.0,
    }
    assert add_used({}, {}) == {}


def test_the_report_says_where_a_load_rows_time_went() -> None:
    used = {"prefect-server": 1.8, "machine": 2.6, "wall": 2.0}
    lines = load_lines(
        "direct",
        {
            "parallel": {"executions_per_s": 9.0, "statuses": {200: 18}, "n": 18, "cpu_s": used},
            "accept": {
                "accepted_per_s": 30.0,
                "statuses": {202: 60, 429: 2},
                "n": 60,
                "cpu_s": used,
            },
        },
    )
    assert "  CPU per accepted call: prefect-server 30 ms (90 % of a core)" in "\n".join(lines)
    assert "  CPU per execution: prefect-server 100 ms (90 % of a core)" in "\n".join(lines)


def test_a_part_counts_the_cpu_of_the_processes_under_it() -> None:
    """A real parent whose child burns CPU: the parent's part has the child's CPU; the
    benchmark's own part (this process, whose children are the stack) does not."""
    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])",
        ]
    )
    try:
        meter = CpuMeter({"parent": parent.pid})
        meter.start()
        deadline = time.monotonic() + 30
        while meter.used()["parent"] < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        used = meter.used()
        assert used["parent"] >= 0.4  # the child's burn, seen while it runs
        assert used["benchmark"] < 0.3  # this process only polled
        assert used["machine"] >= used["parent"] - 0.05
        assert used["wall"] > 0
    finally:
        parent.wait(timeout=30)
    assert tree_cpu_s(parent.pid) == 0.0  # gone: nothing to read
