"""docs/ab_report.md and its figure: the served variants side by side over a labeled set, from what `python -m
client ab-report` measured through the real service. Imported by the factory client: numpy and matplotlib only,
no torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from training.inference.classes import DEFECT_CLASSES, class_label
from training.inference.images import write_atomic
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:
    from client.ab_report import ABReport


def _f1(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _unfamiliar(r: dict) -> str:
    """'1 of 8': the distinct layers a variant found unlike its training layers; '-' when its answers did not say."""
    return "-" if r.get("unfamiliar_layers") is None else f"{r['unfamiliar_layers']} of {r['layers_scored']}"


def render(result: ABReport, figure: str) -> str:
    """The Markdown of the report, which shows the figure named `figure` (a file beside it)."""
    rows = [
        "| variant | requests | p50 ms | p95 ms | p99 ms | layers/s | F1 vs truth | unfamiliar layers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, r in result.models.items():
        rows.append(
            f"| {model} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['throughput_per_s']:.2f} | {_f1(r['f1_vs_truth'])} | {_unfamiliar(r)} |"
        )
    ag = result.agreement
    a, b = ag["pair"]
    speed = result.models[a]["p50_ms"] / result.models[b]["p50_ms"]
    return "\n".join(
        [
            "# A/B report: the served variants side by side",
            "",
            f"{produced_by('python -m client ab-report')} Regenerate:",
            "",
            "```bash",
            result.command,
            "```",
            "",
            f"Each variant answered the same layers through {result.service}, one request at a time "
            "(latency as the caller waited: HTTP, retries and backoff included). F1 is pixel F1 against truth over the distinct layers. "
            "Unfamiliar layers are the distinct layers whose answer said they are unlike the variant's training layers "
            "(`familiarity` in docs/api.md). The machine is shared, so quote ratios.",
            "",
            *rows,
            "",
            f"Agreement of {b} with {a} over {ag['layers']} layers: mask IoU {ag['mask_iou_pooled']:.4f} over all "
            f"pixels (as docs/quantization.md counts it), {ag['mask_iou_mean']:.4f} as the mean of per-layer IoUs "
            f"(lowest {ag['mask_iou_min']:.4f}: small defects weigh more there); same defect decision on "
            f"{ag['decision_agreement']:.1%} of layers; "
            f"median latency {a} / {b} = {speed:.2f}.",
            "",
            *class_rows(result),
            f"![latency]({figure})",
            "",
        ]
    )


def class_rows(result: ABReport) -> list[str]:
    """Per class: each variant's regions and the layers it found the class on, and how often the two variants agree
    whether the class is on a layer; nothing for models without classes."""
    ag = result.agreement
    names = [n for n in DEFECT_CLASSES if n in ag.get("classes", {})]
    if not names:
        return ["The variants answer without defect classes.", ""]
    models = list(result.models)
    head = " | ".join(f"{m} regions (layers)" for m in models)
    rows = [
        "Per class, over the distinct layers (regions of each class, and on how many layers the class was found):",
        "",
        f"| class | {head} | same presence |",
        "|---|" + "---|" * len(models) + "---|",
    ]
    for name in names:
        cells = []
        for m in models:
            t = result.models[m].get("classes", {}).get(name, {"components": 0, "layers": 0})
            cells.append(f"{t['components']} ({t['layers']})")
        rows.append(f"| {class_label(name)} | {' | '.join(cells)} | {ag['classes'][name]:.1%} |")
    return [*rows, ""]


def plot_latency(result: ABReport, path: Path) -> None:
    """Each variant's latencies per layer, as horizontal box plots."""
    fig, ax = pyplot().subplots(figsize=(6, 3))
    names = list(result.models)
    ax.boxplot([result.models[m]["latencies_ms"] for m in names], orientation="horizontal", tick_labels=names)
    ax.set_xlabel("latency per layer as the caller waited, retries included (ms)")
    fig.tight_layout()
    save_png(fig, path)


def write_report(result: ABReport, report: Path) -> None:
    """Write the report to `report` and its figure beside it (`<stem>.png`)."""
    write_atomic(report, render(result, f"{report.with_suffix('').name}.png").encode())
    plot_latency(result, report.with_suffix(".png"))


def summary_table(result: ABReport) -> str:
    """The figures as a plain-text table for the terminal, with the agreement on the last line."""
    lines = [f"{'variant':<14}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'layers/s':>10}{'F1':>8}{'unfamiliar':>12}"]
    for model, r in result.models.items():
        lines.append(
            f"{model:<14}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['throughput_per_s']:>10.2f}"
            f"{_f1(r['f1_vs_truth']):>8}{_unfamiliar(r):>12}"
        )
    ag = result.agreement
    lines.append(
        f"agreement over {ag['layers']} layers: mask IoU {ag['mask_iou_pooled']:.4f} pooled, {ag['mask_iou_mean']:.4f} "
        f"per-layer mean (min {ag['mask_iou_min']:.4f}), "
        f"decisions {ag['decision_agreement']:.1%}"
    )
    return "\n".join(lines)
