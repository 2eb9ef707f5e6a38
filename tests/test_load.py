"""Load and a killed worker at a size that fits the test suite (`python -m bench load` runs the full 2,000)."""

import pytest

from bench.load import Throughput, load_and_fault, summarize
from training.reports.throughput import render

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_load_without_errors_or_memory_growth_and_a_killed_worker_loses_nothing(tiny_store):
    result = load_and_fault(tiny_store, ("defect_fp32", "defect_int8"), size=128, requests=96, concurrency=8,
                            warmup=240)  # the JVM's heap settles over the first few hundred requests  # fmt: skip
    for model, run in result.load.items():
        assert run["errors"] == 0, (model, run["error_samples"])
        assert run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"]
        for part, growth in run["growth"].items():
            assert growth < 0.10, f"{model} {part} grew {growth:.1%} under load"
    fault = result.fault
    assert fault["lost"] == 0
    assert fault["worker_ready_after_kill_s"] is not None
    # the requests in flight at the kill waited at least until the first answer after it, and the figures say so
    assert fault["max_ms"] >= 900 * fault["first_answer_after_kill_s"], fault


def test_the_throughput_report_states_its_command_and_ratios():
    rows = [
        {"variant": v, "batch": 1, "workers": 1, "threads": 2, "concurrency": c, "p50_ms": p, "p95_ms": p,
         "p99_ms": p, "throughput_per_s": 1000 / p, "model_p50_ms": p / 1.2}
        for v, p in (("fp32", 100.0), ("int8", 25.0)) for c in (1, 8)
    ]  # fmt: skip
    summary = summarize(rows)
    assert summary["throughput_ratio"] == pytest.approx(4.0)
    assert summary["median_overhead"] == pytest.approx(1.2)
    text = render(Throughput("python -m bench matrix X", rows, summary), 512)
    assert text.startswith("# Serving throughput") and "python -m bench matrix X" in text and "**4.0x**" in text
