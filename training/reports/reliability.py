"""docs/reliability.md: load per served variant with memory before and after, then a worker killed under load, from
what `python -m bench load` measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.inference.images import write_atomic
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no server
    from bench.load import Reliability


def _load_table(load: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| variant | requests | concurrency | errors | p50 ms | p95 ms | p99 ms | layers/s | frontend MB before → after | "
            "workers MB before → after |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model, r in load.items():
        b, a = r["memory_before"], r["memory_after"]
        rows.append(
            f"| {model} | {r['requests']} | {r['concurrency']} | {r['errors']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['throughput_per_s']:.2f} | {b['frontend_mb']:.0f} → {a['frontend_mb']:.0f} "
            f"({r['growth'].get('frontend_mb', 0):+.1%}) | {b['workers_mb']:.0f} → {a['workers_mb']:.0f} "
            f"({r['growth'].get('workers_mb', 0):+.1%}) |"
        )
    return rows


def render(result: Reliability, command: str, cpu: dict[str, Any]) -> str:
    """The Markdown of the report; `command` and `cpu` (`bench.model.cpu_description()`) are not in the result's JSON."""
    f = result.fault
    return "\n".join([
        "# Reliability: load and a killed worker, against a real TorchServe",
        "",
        f"{produced_by('python -m bench load')} Regenerate:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {cpu.get('model', 'unknown CPU')}, {cpu.get('cores')} cores. TorchServe with the repository's "
        f"config.properties and the archives' default settings (one worker per variant, one inference thread), on "
        f"loopback; synthetic {result.size}x{result.size} layers (three 8-bit PNGs) sent by the factory client "
        "(`client.DefectClient`, retries on connection errors and 503/507), one HTTP session per thread. Memory is the "
        "resident set of the Java frontend and of the Python workers, after a warm-up and after the load.",
        "",
        "## Load",
        "",
        *_load_table(result.load),
        "",
        "## A worker killed under load",
        "",
        f"While {f['requests']} requests ran against {f['model']}, its worker was killed with SIGKILL after a tenth of "
        f"them were answered. Requests lost: **{f['lost']}**. The first answer after the kill came "
        f"{f['first_answer_after_kill_s']:.1f} s later; {_ready(f['worker_ready_after_kill_s'])}. Latency of that run, as the callers waited (retries and backoff "
        f"included): p99 {f['p99_ms']:.0f} ms, longest {f['max_ms']:.0f} ms (p99 shows the outage only when more "
        "than 1 % of the requests were in flight at the kill).",
        "",
        "Stopping and starting the whole server under a running batch is tested by `tests/test_client.py` (no layer "
        "lost, the client re-reads the new keys).",
        "",
    ])  # fmt: skip


def _ready(seconds: float | None) -> str:
    if seconds is None:
        return "TorchServe reported no new worker ready before the run ended"
    return f"TorchServe reported a new worker ready after {seconds} s"


def write_report(result: Reliability, command: str, cpu: dict[str, Any], path: Path) -> None:
    """Write the report to `path`."""
    write_atomic(path, render(result, command, cpu).encode())
