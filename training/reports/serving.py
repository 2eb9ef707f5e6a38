"""docs/serving.md and its figure: single-request HTTP latency of each served variant beside the model-only time of
the same archive, from what `python -m bench serving` measured."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.inference.images import write_atomic
from training.inference.variants import variant
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no torch and no server
    from bench.serving import ServingBench


def _table(rows: list[dict]) -> list[str]:
    table = [
        "| variant | layer | HTTP median (p90) ms | model only median (p90) ms | HTTP / model | worker: decode / inference / postprocess ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        http, alone, worker = r["http"], r["model_only"], r["http"]["worker_ms"]
        table.append(
            f"| {r['model']} | {r['size']}² | {http['median_ms']:.1f} ({http['p90_ms']:.1f}) | "
            f"{alone['median_ms']:.1f} ({alone['p90_ms']:.1f}) | {http['median_ms'] / alone['median_ms']:.2f} | "
            f"{worker['decode']:.1f} / {worker['inference']:.1f} / {worker['postprocess']:.1f} |"
        )
    return table


def _speedups(rows: list[dict]) -> list[str]:
    """Per layer size where both were served: how much faster int8 answers than fp32 over HTTP."""
    lines = []
    fp32, int8 = variant("fp32").model_name, variant("int8").model_name
    for size in sorted({r["size"] for r in rows}):
        pair = {r["model"]: r for r in rows if r["size"] == size}
        if {fp32, int8} <= set(pair):
            ratio = pair[fp32]["http"]["median_ms"] / pair[int8]["http"]["median_ms"]
            lines.append(f"- {size}²: int8 answers {ratio:.1f}x faster than fp32 over HTTP")
    return lines


def render(result: ServingBench, figure: str) -> str:
    """The Markdown of the report, which shows the figure named `figure` (a file beside it)."""
    cpu = result.cpu
    threads = sorted({r["threads"] for r in result.rows})
    return "\n".join(
        [
            "# Serving latency: one request at a time over HTTP, beside the model alone",
            "",
            f"{produced_by('python -m bench serving')} Regenerate:",
            "",
            "```bash",
            result.command,
            "```",
            "",
            f"Machine: {cpu.get('model', 'unknown CPU')}, {cpu.get('cores')} cores visible; torch {cpu.get('torch')}. "
            f"A real TorchServe on loopback with the archives of the model store, one worker per variant with "
            f"{', '.join(map(str, threads))} inference thread(s), as `config.properties` and the archives set it; one synthetic "
            f"layer (three 8-bit PNGs) per size, {result.repeat} requests per row after two warm-up requests. "
            "'model only' is the same archive's model, loaded as the worker loads it and with the same threads, "
            "running the same layer through the same tiled inference in one process after the server stopped. "
            "The machine is shared, so quote ratios.",
            "",
            *_table(result.rows),
            "",
            *_speedups(result.rows),
            "",
            "HTTP / model is the serving overhead: PNG decoding, the answer (components, mask PNG, JSON) and the "
            "transport. The worker's own split of the last request is in the last column.",
            "",
            f"![latency]({figure})",
            "",
        ]
    )


def plot_latency(result: ServingBench, path: Path) -> None:
    """HTTP and model-only median latency per row, as paired bars on a log scale."""
    rows = result.rows
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    labels = [f"{r['model']} {r['size']}²" for r in rows]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["http"]["median_ms"] for r in rows], 0.4, label="HTTP")
    ax.barh(y + 0.2, [r["model_only"]["median_ms"] for r in rows], 0.4, label="model only")
    ax.set_yticks(y, labels)
    ax.set_xscale("log")
    ax.set_xlabel("median latency (ms, log scale)")
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def write_report(result: ServingBench, report: Path) -> None:
    """Write the report to `report` and its figure beside it (`<stem>.png`)."""
    write_atomic(report, render(result, f"{report.with_suffix('').name}.png").encode())
    plot_latency(result, report.with_suffix(".png"))


def summary(result: ServingBench) -> str:
    """One line for the terminal: the median serving overhead."""
    ratios = [r["http"]["median_ms"] / r["model_only"]["median_ms"] for r in result.rows]
    return f"HTTP / model-only median over {len(ratios)} rows: {statistics.median(ratios):.2f}"
