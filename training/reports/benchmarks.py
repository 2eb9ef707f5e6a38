"""docs/benchmarks.md and its figure: every inference variant's latency side by side, from what `python -m bench
model` measured, with the int8 speed-up as the served rows define it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.inference.images import write_atomic
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no torch
    from bench.model import Benchmark

# The rows that run what each registered variant serves (training/inference/loaders.py): the int8 speed-up is the
# served fp32 row over the served int8 row.
SERVED_ROWS = {"fp32": "fp32 channels_last", "int8": "static int8 FX frozen"}


def _lookup(rows: list[dict], variant: str, size: int, batch: int, threads: int) -> dict | None:
    return next(
        (r for r in rows if (r["variant"], r["size"], r["batch"], r["threads"]) == (variant, size, batch, threads)),
        None,
    )


def _reference(result: Benchmark) -> tuple[int, dict[str, dict | None]]:
    """The threads of the reference shape (512², batch 1, the most threads) and each variant's row at it."""
    rows = result.rows
    threads = max(r["threads"] for r in rows)
    return threads, {v: _lookup(rows, v, 512, 1, threads) for v in dict.fromkeys(r["variant"] for r in rows)}


def _ceiling(result: Benchmark, eager: dict, ort8: dict) -> list[str]:
    """How fast int8 could be against each reference if it ran at the CPU's estimated int8 peak. The peak is derived
    from the reported clock and assumed port counts, not measured, so the bound is an estimate, stated as one."""
    peak = result.cpu.get("vnni_peak_gmacs")
    if not peak:
        return []
    gmac = result.gmac_512
    at_peak_ms = gmac / peak * 1e3
    fp32_peak = result.cpu.get("fp32_peak_gmacs")
    eager_eff = (
        f" (fp32 eager runs at {gmac / (eager['median_ms'] / 1e3) / fp32_peak:.0%} of the fp32 FMA peak of {fp32_peak:.0f} GMAC/s)"
        if fp32_peak
        else ""
    )
    return [
        f"- estimated ceiling: at the estimated int8 peak (clock x assumed ports, not measured) one frame would take "
        f"{at_peak_ms:.1f} ms, so an int8 kernel could be at most about {eager['median_ms'] / at_peak_ms:.1f}x faster "
        f"than fp32 eager{eager_eff} and about {ort8['median_ms'] / at_peak_ms:.1f}x faster than ONNX Runtime int8 "
        f"(which runs at {gmac / (ort8['median_ms'] / 1e3) / peak:.0%} of that estimate); a turbo clock raises the estimate"
    ]


def _ratios(result: Benchmark, ref: dict[str, dict | None]) -> list[str]:
    """The lines of the reference shape: speed-ups of static int8 (frozen), its throughput and its ceiling."""
    eager, int8f, ort8 = ref.get("fp32 eager"), ref.get("static int8 FX frozen"), ref.get("ONNX Runtime int8 (QDQ)")
    if not (eager and int8f and ort8):
        return []
    best_float = min(
        (ref[v] for v in ("fp32 channels_last", "fp32 TorchScript frozen") if ref.get(v)),
        key=lambda r: r["median_ms"],
    )
    cpu = result.cpu
    gmacs = result.gmac_512 / (int8f["median_ms"] / 1e3)
    served = ref.get(SERVED_ROWS["fp32"])
    return [
        *(
            [
                f"- **int8 speed-up** (the served int8 form, {SERVED_ROWS['int8']}, over the served fp32 form, "
                f"{SERVED_ROWS['fp32']}; the definition in docs/design.md): **{served['median_ms'] / int8f['median_ms']:.1f}x**"
            ]
            if served
            else []
        ),
        f"- static int8 (frozen) vs fp32 eager (the prototype's float form): {eager['median_ms'] / int8f['median_ms']:.1f}x",
        f"- static int8 (frozen) vs the best float ({best_float['variant']}): {best_float['median_ms'] / int8f['median_ms']:.1f}x",
        f"- static int8 (frozen) vs ONNX Runtime int8: {ort8['median_ms'] / int8f['median_ms']:.1f}x",
        f"- int8 throughput: {result.gmac_512:.1f} GMAC per frame / {int8f['median_ms']:.1f} ms = **{gmacs:.0f} GMAC/s**"
        + (
            f", {gmacs / cpu['vnni_peak_gmacs']:.0%} of an estimated AVX-512 VNNI peak of "
            f"{cpu['vnni_peak_gmacs']:.0f} GMAC/s (two 512-bit VPDPBUSD, 64 int8 multiply-accumulates "
            f"each, per cycle per core, at the {cpu['mhz']:.0f} MHz the CPU reports, on "
            f"{cpu['cores']} cores; a turbo clock would raise it)"
            if cpu.get("vnni_peak_gmacs")
            else ""
        ),
        *_ceiling(result, eager, ort8),
    ]


def _latency_table(rows: list[dict[str, Any]]) -> list[str]:
    """Median (p90) per variant and per input size, batch and threads; '-' where a variant was not run."""
    shapes = sorted({(r["size"], r["batch"], r["threads"]) for r in rows})
    table = [
        "| variant | " + " | ".join(f"{s}² b{b} t{t}" for s, b, t in shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for s, b, t in shapes:
            r = _lookup(rows, v, s, b, t)
            cells.append("-" if r is None else f"{r['median_ms']:.1f} ({r['p90_ms']:.1f})")
        table.append(f"| {v} | " + " | ".join(cells) + " |")
    return table


def _heads_section(rows: list[dict[str, Any]]) -> list[str]:
    """The served path with the class head beside the binary head, per served variant; nothing for a run that
    predates it."""
    if not rows:
        return []
    by = {(r["variant"], r["head"]): r for r in rows}
    first = rows[0]
    lines = [
        f"## What classes cost: the served path at {first['size']}², class head vs binary head ({first['threads']} threads)",
        "",
        "One layer through what the handler runs after decoding (tiled inference, `detect`, the familiarity check), "
        "with this network's six-class head and with a binary head; both `detect` calls read the same defect "
        "probability, so they describe the same regions. The heads take turns, round after round.",
        "",
        "| served variant | class head ms (p90) | binary head ms (p90) | class / binary | rounds |",
        "|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        c, b = by[(variant, "class")], by[(variant, "binary")]
        lines.append(
            f"| {variant} | {c['median_ms']:.1f} ({c['p90_ms']:.1f}) | {b['median_ms']:.1f} ({b['p90_ms']:.1f}) | "
            f"{c['median_ms'] / b['median_ms']:.3f} | {c['runs']} |"
        )
    return [*lines, ""]


def render(result: Benchmark, figure: str) -> str:
    """The Markdown of the report, which shows the figure named `figure` (a file beside it)."""
    threads, ref = _reference(result)
    sizes = result.sizes_bytes
    cpu = result.cpu
    tiled = result.tiled_layer
    return "\n".join(
        [
            "# Benchmarks: float32 and int8 inference on the CPU",
            "",
            f"{produced_by('python -m bench model')} Regenerate:",
            "",
            "```bash",
            result.command,
            "```",
            "",
            f"Machine: {cpu.get('model', 'unknown CPU')}, {cpu.get('cores')} cores visible, AVX-512 VNNI {cpu.get('avx512_vnni')}, "
            f"AMX int8 {cpu.get('amx_int8')}; torch {cpu.get('torch')}, ONNX Runtime {cpu.get('onnxruntime')}. All rows come from "
            "one run on the same inputs; the machine is shared, so quote ratios, not absolute times.",
            "",
            f"## At 512², batch 1, {threads} threads",
            "",
            *_ratios(result, ref),
            "",
            "## Median latency in ms (p90 in brackets), per input size, batch and threads",
            "",
            *_latency_table(result.rows),
            "",
            "## Model files",
            "",
            "| file | size |",
            "|---|---|",
            *[f"| {k} | {v / 1e6:.2f} MB |" for k, v in sizes.items()],
            "",
            f"fp32 / int8 state dict: {sizes['fp32 state dict'] / sizes['int8 state dict']:.2f}x smaller.",
            "",
            f"## One {tiled['size']}x{tiled['size']} layer, tiled ({tiled['tile']}-pixel tiles, {tiled['threads']} threads)",
            "",
            *[f"- {name}: {ms:.0f} ms" for name, ms in tiled["ms"].items()],
            "",
            *_heads_section(result.heads),
            f"![latency]({figure})",
            "",
        ]
    )


def plot_latency(result: Benchmark, path: Path) -> None:
    """Median latency of each variant at the reference shape, as bars."""
    threads, ref = _reference(result)
    fig, ax = pyplot().subplots(figsize=(7, 3.8))
    names = [v for v, r in ref.items() if r]
    ax.barh(names, [ref[v]["median_ms"] for v in names])
    ax.set_xlabel(f"median latency at 512², batch 1, {threads} threads (ms)")
    ax.invert_yaxis()
    fig.tight_layout()
    save_png(fig, path)


def write_report(result: Benchmark, report: Path) -> None:
    """Write the report to `report` and its figure beside it (`<stem>.png`)."""
    write_atomic(report, render(result, f"{report.with_suffix('').name}.png").encode())
    plot_latency(result, report.with_suffix(".png"))
