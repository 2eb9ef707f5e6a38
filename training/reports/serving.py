"""docs/serving.md and its figure: single-request HTTP latency of each served variant beside the model-only time of
the same archive, from what `python -m bench serving` measured."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.inference.images import write_atomic
from training.inference.variants import variant
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no torch and no server
    from bench.serving import ServingBench


OVERHEAD_TARGET_MS = 10.0  # HTTP median minus the model's median alone, for one 512 layer


def parts(row: dict) -> dict[str, float | None]:
    """The serving overhead of one row (HTTP median minus the model alone) and where it goes, in ms: the handler's
    decoding and answer, the model's extra time inside the worker, TorchServe's worker and socket (the frontend's
    time in the worker minus the handler's), and the frontend's HTTP with the client (HTTP minus the frontend's
    time in the worker and in the queue). Rows measured before the frontend's counters have None for the last two."""
    http, alone, worker = row["http"], row["model_only"]["median_ms"], row["http"]["worker_ms"]
    frontend = http.get("frontend_ms") or {}
    handler = worker["decode"] + worker["inference"] + worker["postprocess"]
    inside = frontend.get("inference")
    return {
        "overhead": http["median_ms"] - alone,
        "decode": worker["decode"],
        "postprocess": worker["postprocess"],
        "model_in_worker": worker["inference"] - alone,
        "worker_and_socket": None if inside is None else inside - handler,
        "http_and_client": None if inside is None else http["median_ms"] - inside - (frontend.get("queue") or 0.0),
    }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _table(rows: list[dict]) -> list[str]:
    table = [
        "| variant | layer | HTTP median (p90) ms | model alone median (p90) ms | overhead ms | decode | answer | "
        "model in worker - alone | TorchServe worker and socket | HTTP and client |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        http, alone, part = r["http"], r["model_only"], parts(r)
        table.append(
            f"| {r['model']} | {r['size']}² | {http['median_ms']:.1f} ({http['p90_ms']:.1f}) | "
            f"{alone['median_ms']:.1f} ({alone['p90_ms']:.1f}) | **{part['overhead']:.1f}** | {_ms(part['decode'])} | "
            f"{_ms(part['postprocess'])} | {_ms(part['model_in_worker'])} | {_ms(part['worker_and_socket'])} | "
            f"{_ms(part['http_and_client'])} |"
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
            "The overhead is the HTTP median minus the model's median alone (target for a 512² layer: <= "
            f"{OVERHEAD_TARGET_MS:g} ms). Its parts, in ms: the handler decoding the three PNGs and making the answer "
            "(components, mask PNG, familiarity), medians over the timed requests; the model's median in the worker "
            "minus alone; TorchServe's worker and its socket (the frontend's mean time in the worker, from its "
            "`ts_inference_latency_microseconds`, minus the handler's parts); the frontend's HTTP and the client (the "
            "HTTP median minus the frontend's mean time in the worker and in the queue). Medians and means do not add "
            "up exactly.",
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
    """One line for the terminal: the serving overhead of each row."""
    return "serving overhead (HTTP - model alone): " + ", ".join(
        f"{r['model']} {r['size']}² {parts(r)['overhead']:.1f} ms" for r in result.rows
    )
