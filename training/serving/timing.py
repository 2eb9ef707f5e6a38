"""Latency measurement shared by `archive` (which backend serves each variant) and the benchmarks: warm-up first,
then the median and p90 of the repeats; runs compared with each other take turns."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def measure(run: Callable[[], Any], repeat: int, max_seconds: float, warm_up: int = 2) -> dict[str, float]:
    """Median and p90 latency in milliseconds after `warm_up` runs; stops early past max_seconds."""
    for _ in range(warm_up):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - started < max_seconds):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return summary(times)


def measure_alternating(
    runs: dict[str, Callable[[], Any]], repeat: int, max_seconds: float
) -> dict[str, dict[str, float]]:
    """`measure` for several runs compared with each other: they take turns, one call each per round, so that
    whatever else the machine does slows them alike."""
    for run in runs.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    started = time.perf_counter()
    rounds = 0
    while rounds < repeat and (rounds < 3 or time.perf_counter() - started < max_seconds * len(runs)):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: summary(t) for name, t in times.items()}


def summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "runs": len(times),
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return "unknown"
