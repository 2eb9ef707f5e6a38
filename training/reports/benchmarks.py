"""docs/benchmarks.md and its figure: every inference variant's latency side by side, from what `python -m bench
model` measured, with the int8 speed-up as the served rows define it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.inference.images import write_atomic
from training.inference.variants import OPENVINO, PYTORCH
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # typing only: rendering needs no torch
    from bench.model import Benchmark

# The rows that run each registered variant's builds (training/inference/loaders.py), by backend: a variant is served
# on its faster build (`archive` measures the same on the machine that builds the archives), and the int8 speed-up is
# the served fp32 row over the served int8 row.
BUILD_ROWS = {
    "fp32": {PYTORCH: "fp32 channels_last", OPENVINO: "OpenVINO fp32"},
    "int8": {PYTORCH: "static int8 FX frozen", OPENVINO: "OpenVINO int8 (NNCF)"},
}
# The prototype's network (smp's default decoder) at its fastest: the comparison the served int8 is held to.
PROTOTYPE_ROWS = {"fp32": "prototype network, OpenVINO fp32", "int8": "prototype network, OpenVINO int8 (NNCF)"}
INT8_ROWS = ("dynamic int8 (prototype)", "static int8 FX", "static int8 FX frozen", BUILD_ROWS["int8"][OPENVINO],
             "ONNX Runtime int8 (QDQ)", PROTOTYPE_ROWS["int8"])  # fmt: skip
TARGETS = {"served int8 / prototype OpenVINO int8": 2.0, "int8 tiled 2048 ms": 500.0}


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


def served(ref: dict[str, dict | None]) -> dict[str, dict]:
    """Each variant's served row at the reference shape: its faster build."""
    return {
        key: min((ref[name] for name in builds.values() if ref.get(name)), key=lambda r: r["median_ms"])
        for key, builds in BUILD_ROWS.items()
        if any(ref.get(name) for name in builds.values())
    }


def _ratios(result: Benchmark, ref: dict[str, dict | None]) -> list[str]:
    """The lines of the reference shape: the served variants against each other, against the prototype's network
    at its fastest and against ONNX Runtime."""
    serve = served(ref)
    if set(serve) != set(BUILD_ROWS):
        return []
    fp32, int8 = serve["fp32"], serve["int8"]
    lines = [
        f"- served fp32: {fp32['variant']}; served int8: {int8['variant']} (each variant's faster build, as `archive` "
        "chooses)",
        f"- **int8 speed-up** (served int8 over served fp32; the definition in docs/design.md): "
        f"**{fp32['median_ms'] / int8['median_ms']:.1f}x**",
    ]
    proto8, proto32 = ref.get(PROTOTYPE_ROWS["int8"]), ref.get(PROTOTYPE_ROWS["fp32"])
    if proto8:
        target = TARGETS["served int8 / prototype OpenVINO int8"]
        ratio = proto8["median_ms"] / int8["median_ms"]
        lines.append(
            f"- **served int8 vs the prototype's network on OpenVINO int8**: **{ratio:.2f}x** faster (target >= "
            f"{target:g}x: {'met' if ratio >= target else 'not met'})"
        )
    if proto32:
        lines.append(
            f"- served fp32 vs the prototype's network on OpenVINO fp32: {proto32['median_ms'] / fp32['median_ms']:.2f}x"
        )
    openvino_fp32 = ref.get(BUILD_ROWS["fp32"][OPENVINO])
    if openvino_fp32:
        lines.append(
            f"- served fp32 vs OpenVINO fp32 of the same network: {openvino_fp32['median_ms'] / fp32['median_ms']:.2f}x "
            "(1.00x when OpenVINO serves it)"
        )
    for name in ("fp32 eager", "ONNX Runtime int8 (QDQ)"):
        if ref.get(name):
            lines.append(f"- served int8 vs {name}: {ref[name]['median_ms'] / int8['median_ms']:.1f}x")
    return lines


def _peak_lines(result: Benchmark, ref: dict[str, dict | None], threads: int) -> list[str]:
    """Each row's multiply-accumulates per second at the reference shape against the peak measured for its
    precision at the same thread count."""
    peaks = result.peaks
    if not peaks:
        return []
    fp32_peak, int8_peak = peaks["fp32"].get(str(threads)), peaks["int8"].get(str(threads))
    lines = [
        f"Peaks measured here by a matrix-product microbenchmark (`bench.model.measured_peaks`: 2048², the best of 5 "
        "runs of torch's and OpenVINO's kernels, before and after the rows) at "
        f"{threads} threads: fp32 {fp32_peak:.0f} GMAC/s, int8 {int8_peak:.0f} GMAC/s. A convolution network reaches a "
        "share of these; a share above 100% means the machine was busier while the peaks were measured than while "
        "that row ran.",
        "",
        "| variant | GMAC per frame | GMAC/s | share of its precision's measured peak |",
        "|---|---|---|---|",
    ]
    for name, row in ref.items():
        if row and "gmac" in row:
            rate = row["gmac"] / (row["median_ms"] / 1e3)
            peak = int8_peak if row.get("precision") == "int8" else fp32_peak
            lines.append(f"| {name} | {row['gmac']:.1f} | {rate:.0f} | {rate / peak:.0%} |")
    return [*lines, ""]


def _accuracy_lines(result: Benchmark) -> list[str]:
    """Each model's agreement with its float32 and F1 against truth on the test layers."""
    if not result.accuracy:
        return []

    def cell(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "## Accuracy of each model (test layers, at the model's threshold)",
        "",
        "Agreement with the same network's float32 (eager PyTorch) and F1 of pixels against exact truth; the "
        "prototype's network against its own float32, at its own threshold.",
        "",
        "| model | mask IoU with fp32 | decision agreement | F1 fp32 | F1 of the model | F1 drop |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in result.accuracy.items():
        lines.append(
            f"| {name} | {cell(a['mask_iou'], 4)} | {cell(a['decision_agreement'])} | {cell(a.get('f1_float'))} | "
            f"{cell(a.get('f1_int8'))} | {cell(a.get('f1_drop'), 4)} |"
        )
    return [*lines, ""]


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


def _tiled_target(tiled: dict[str, Any]) -> list[str]:
    """The fastest int8 build's time for the full layer against the target (a 2048² layer only)."""
    int8 = {name: timing["median_ms"] for name, timing in tiled["ms"].items() if name in INT8_ROWS}
    if tiled["size"] != 2048 or not int8:
        return []
    name = min(int8, key=int8.get)
    target = TARGETS["int8 tiled 2048 ms"]
    return [f"- fastest int8 ({name}): {int8[name]:.0f} ms (target <= {target:.0f} ms: "
            f"{'met' if int8[name] <= target else 'not met'})"]  # fmt: skip


def _seams_lines(seams: dict[str, Any] | None) -> list[str]:
    """What tiles change in a large layer's answer, per overlap (`bench.model.seams`)."""
    if not seams:
        return []
    shares = ", ".join(f"{o} px: {100 * share:.3f}%" for o, share in seams["changed_share"].items())
    return ["", f"What tiles change: {seams['mosaics']} layers of {seams['layer']}² (4 x 4 test layers), through tiles "
            f"answering for at most {seams['tile']} pixels a side against the served int8 build on the whole layer; "
            f"the share of pixels decided differently, by overlap: {shares}. The network's view ends at a tile's "
            "border and reaches far, so the served default runs layers up to its tile size whole."]  # fmt: skip


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
            f"AMX int8 {cpu.get('amx_int8')}; torch {cpu.get('torch')}, OpenVINO {cpu.get('openvino')}, ONNX Runtime "
            f"{cpu.get('onnxruntime')}. All rows come from one run on the same inputs; the machine is shared, so quote "
            "ratios, not absolute times.",
            "",
            f"## At 512², batch 1, {threads} threads",
            "",
            *_ratios(result, ref),
            "",
            *_peak_lines(result, ref, threads),
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
            *_accuracy_lines(result),
            f"## One {tiled['size']}x{tiled['size']} layer, tiled ({tiled['threads']} threads)",
            "",
            f"Preprocessing, tiles (each answers for at most {tiled['tile']} pixels a side, neighbours sharing at least "
            f"{tiled['overlap']}) and their probabilities; the median after two untimed runs.",
            "",
            *[
                f"- {name}: {t['median_ms']:.0f} ms (p90 {t['p90_ms']:.0f}, {t['runs']} runs)"
                for name, t in tiled["ms"].items()
            ],
            *_tiled_target(tiled),
            *_seams_lines(tiled.get("seams")),
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
