"""Where a benchmark row's time goes: the CPU each part of the stack used over it.

For: `endpoint_path.py`'s load rows (accept, parallel), whose bound on 2 cores is a process
that runs out of CPU, not a wait. `CpuMeter` names each part by the process it started as
(the Prefect server, PostgreSQL, the worker with its pods, each gateway, the benchmark's own
process); `used()` gives the CPU seconds each part (the process and every process under it,
except the benchmark's, whose children are the stack) spent since the meter's `start()`. A
process that ends meanwhile takes its CPU with it: none does during the rows measured.
Not for: a run on its own, or anything the test suite times.
"""

from __future__ import annotations

import os
import time

import psutil

#: A part that used less than this share of one core over a row is not named in its line.
IDLE_SHARE = 0.01


def tree_cpu_s(pid: int, with_children: bool = True) -> float:
    """User + system CPU seconds of `pid` (and every process under it), 0 if it is gone."""
    try:
        root = psutil.Process(pid)
        processes = [root, *(root.children(recursive=True) if with_children else [])]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class CpuMeter:
    """The CPU of named parts of the stack between `start()` and `used()`."""

    def __init__(self, parts: dict[str, int]) -> None:
        """`parts`: a part's name -> the pid it started as ("benchmark": this process alone)."""
        self.parts = {**parts, "benchmark": os.getpid()}
        self._before: dict[str, float] = {}
        self._machine_before = 0.0
        self._started = 0.0

    def _now(self) -> dict[str, float]:
        return {
            name: tree_cpu_s(pid, with_children=name != "benchmark")
            for name, pid in self.parts.items()
        }

    def start(self) -> None:
        self._before = self._now()
        self._machine_before = busy_cpu_s()
        self._started = time.perf_counter()

    def used(self) -> dict[str, float]:
        """CPU seconds per part since `start()`, plus "machine" (every process's, busy time of
        all cores) and "wall" (seconds elapsed)."""
        now = self._now()
        used = {name: now[name] - self._before.get(name, now[name]) for name in now}
        used["machine"] = busy_cpu_s() - self._machine_before
        used["wall"] = time.perf_counter() - self._started
        return used


def busy_cpu_s() -> float:
    """Seconds all cores of the machine spent not idle, since boot."""
    times = psutil.cpu_times()
    return sum(getattr(times, field, 0.0) for field in ("user", "nice", "system", "irq", "softirq"))


def add_used(total: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """`total` with `more` added, part by part (a row measured in several parts)."""
    return {name: total.get(name, 0.0) + more.get(name, 0.0) for name in {*total, *more}}


def cpu_line(used: dict[str, float], count: int, what: str) -> str:
    """ "CPU per execution: prefect-server 61 ms (94 % of a core), ..." for `count` of `what`,
    the parts by CPU used, the busiest part's share of one core over the wall time, and the
    machine's share of all its cores. A part that used less than IDLE_SHARE of a core is left
    out (the other gateway, idle during a row)."""
    if not count or not used.get("wall"):
        return f"CPU per {what}: no {what}s"
    wall = used["wall"]
    parts = sorted(
        (
            (name, s)
            for name, s in used.items()
            if name not in ("machine", "wall") and s >= IDLE_SHARE * wall
        ),
        key=lambda item: -item[1],
    )
    shown = ", ".join(
        f"{name} {1000 * s / count:.0f} ms ({100 * s / wall:.0f} % of a core)" for name, s in parts
    )
    cores = psutil.cpu_count() or 1
    return (
        f"CPU per {what}: {shown}; the machine's {cores} cores were "
        f"{100 * used['machine'] / (wall * cores):.0f} % busy"
    )
