"""docs/throughput.md: serving throughput and latency over batchSize, workers and concurrency, beside the model
alone, from what `python -m bench matrix` measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.inference.images import write_atomic
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no server
    from bench.load import Throughput


def _table(rows: list[dict]) -> list[str]:
    """One row per TorchServe setting: p50 and throughput per concurrency, the model alone and the HTTP overhead."""
    concurrencies = sorted({r["concurrency"] for r in rows})
    head = "| variant | batchSize | workers x threads | " + " | ".join(
        f"c{c} p50 ms | c{c} layers/s" for c in concurrencies) + " | model alone ms | HTTP p50 c1 / model |"  # fmt: skip
    table = [head, "|---|---|---|" + "---|---|" * len(concurrencies) + "---|---|"]
    for key in dict.fromkeys((r["variant"], r["batch"], r["workers"], r["threads"]) for r in rows):
        cells = {r["concurrency"]: r for r in rows if (r["variant"], r["batch"], r["workers"], r["threads"]) == key}
        c1 = cells[concurrencies[0]]
        table.append(
            f"| {key[0]} | {key[1]} | {key[2]} x {key[3]} | "
            + " | ".join(f"{cells[c]['p50_ms']:.1f} | {cells[c]['throughput_per_s']:.2f}" for c in concurrencies)
            + f" | {c1['model_p50_ms']:.1f} | {c1['p50_ms'] / c1['model_p50_ms']:.2f} |"
        )
    return table


def render(result: Throughput, size: int) -> str:
    """The Markdown of the report; `size` (the layer side in pixels) is not in the result's JSON."""
    summary = result.summary
    best = summary["best"]
    return "\n".join([
        f"# Serving throughput over HTTP ({size}², a real TorchServe on loopback)",
        "",
        f"{produced_by('python -m bench matrix')} Regenerate:",
        "",
        "```bash",
        result.command,
        "```",
        "",
        "Each row is one TorchServe setting (archives rebuilt with that batchSize, workers and inference threads per "
        f"worker, so workers x threads = the {_cores(result.rows)} cores); each cell sends the same synthetic layers through the factory "
        "client at that concurrency; 'model alone' is the same weights with the same threads in one process.",
        "",
        *_table(result.rows),
        "",
        f"- int8 serving throughput vs fp32, best setting of each: **{summary['throughput_ratio']:.1f}x** "
        f"({best['int8']['throughput_per_s']:.2f} vs {best['fp32']['throughput_per_s']:.2f} layers/s)",
        f"- HTTP p50 / model p50 at concurrency 1, batchSize 1: median **{summary['median_overhead']:.2f}** "
        f"({', '.join(f'{k}: {v:.2f}' for k, v in summary['overhead'].items())})",
        "",
    ])  # fmt: skip


def _cores(rows: list[dict[str, Any]]) -> int:
    return max(r["workers"] * r["threads"] for r in rows)


def write_report(result: Throughput, size: int, path: Path) -> None:
    """Write the report to `path`."""
    write_atomic(path, render(result, size).encode())
