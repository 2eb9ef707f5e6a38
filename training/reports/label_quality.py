"""label_quality.md: each vote rule of the heuristic labels against the generator's exact truth, with a figure of
the scores and one of example overlays. Every number and sentence in it comes from the run that wrote it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.inference.classes import DEFECT_CLASSES
from training.inference.images import write_atomic
from training.preparation.labels import VOTES
from training.reports.figures import display_stack, error_overlay, pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:
    from training.preparation.label_quality import Example, LabelQuality

log = logging.getLogger(__name__)

MARKDOWN, METRICS_PNG, EXAMPLES_PNG = "label_quality.md", "label_quality.png", "label_quality_examples.png"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def findings(summary: dict) -> list[str]:
    """Plain sentences drawn from the numbers (never typed by hand)."""
    rules = summary["rules"]
    best = max(rules, key=lambda r: rules[r]["iou"])
    a, m = rules["and"], rules["majority"]
    lines = [
        f"Highest pixel IoU against the truth: `{best}` ({rules[best]['iou']:.3f}); "
        f"`majority` {m['iou']:.3f}, `and` {a['iou']:.3f}, `or` {rules['or']['iou']:.3f}.",
        f"`and` labels {a['label_density']:.3%} of pixels and `majority` {m['label_density']:.3%}, "
        f"where the truth has {a['truth_density']:.3%}; recall {a['recall']:.3f} (`and`) vs {m['recall']:.3f} "
        "(`majority`).",
    ]
    ratio = a["label_density"] / m["label_density"] if m["label_density"] else float("nan")
    if ratio < 0.5:
        lines.append(
            f"`and` keeps {ratio:.0%} of what `majority` labels: sparser by more than half, as the prototype found."
        )
    else:
        lines.append(f"`and` keeps {ratio:.0%} of what `majority` labels: here it is not much sparser than `majority`.")
    missed = [n for n, c in m["classes"].items() if c["instances"] and (c["instance_recall"] or 0.0) < 0.5]
    if missed:
        lines.append(f"Classes that `majority` finds in fewer than half of their instances: {', '.join(missed)}.")
    thin = [n for n, c in m["classes"].items() if c["instances"] and (c["pixel_recall"] or 0.0) < 0.5]
    if thin:
        lines.append(f"Classes whose pixels `majority` mostly misses (pixel recall below 0.5): {', '.join(thin)}.")
    flagged = m["clean_layers_flagged"]
    if summary["clean_layers"]:
        lines.append(
            f"`majority` marks something on {flagged} of {summary['clean_layers']} defect-free layers (false alarms)."
        )
    return lines


def plot_metrics(summary: dict, path: Path) -> None:
    """Pixel scores per vote rule, and the share of defect instances each rule finds per class."""
    plt = pyplot()
    rules = list(VOTES)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    names = ["precision", "recall", "iou", "f1"]
    width = 0.8 / len(rules)
    for i, rule in enumerate(rules):
        values = [summary["rules"][rule][n] for n in names]
        axes[0].bar(np.arange(len(names)) + i * width, values, width, label=rule)
    axes[0].set_xticks(np.arange(len(names)) + width, names)
    axes[0].set_ylim(0, 1)
    axes[0].set_title("pixel scores against exact truth")
    axes[0].legend(title="vote")
    for i, rule in enumerate(rules):
        values = [summary["rules"][rule]["classes"][n]["instance_recall"] or 0.0 for n in DEFECT_CLASSES]
        axes[1].bar(np.arange(len(DEFECT_CLASSES)) + i * width, values, width, label=rule)
    axes[1].set_xticks(
        np.arange(len(DEFECT_CLASSES)) + width, [n.replace("_", "\n") for n in DEFECT_CLASSES], fontsize=8
    )
    axes[1].set_ylim(0, 1)
    axes[1].set_title("defect instances found, per class")
    fig.tight_layout()
    save_png(fig, path)


def plot_examples(examples: list[Example], path: Path) -> None:
    """Per example layer: the stacked image, the truth by class, and each vote rule's errors against the truth."""
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    classes_cmap = ListedColormap(["black", *plt.get_cmap("tab10").colors[: len(DEFECT_CLASSES)]])
    columns = ["stacked image", "truth (colour = class)", *[f"vote: {r}" for r in VOTES]]
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(3 * len(columns), 3 * len(examples)), squeeze=False)
    for row, example in enumerate(examples):
        reference = example.truth > 0
        axes[row, 0].imshow(display_stack(example.stack))
        axes[row, 0].set_ylabel(example.layer_id, fontsize=8)
        axes[row, 1].imshow(example.truth, cmap=classes_cmap, vmin=0, vmax=len(DEFECT_CLASSES), interpolation="nearest")
        for col, needed in enumerate(VOTES.values(), start=2):
            axes[row, col].imshow(error_overlay(example.stack, example.votes >= needed, reference))
        for col, title in enumerate(columns):
            axes[0, col].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("green: label and truth agree; red: labelled but not a defect; blue: defect missed", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def render(quality: LabelQuality) -> str:
    """The Markdown of the report, which shows the figures written beside it (the examples only when there are)."""
    summary = quality.summary
    rows = [
        f"| `{rule}` | {r['votes_needed']} of 3 | {r['label_density']:.3%} | {r['truth_density']:.3%} | "
        f"{_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['iou'])} | {_fmt(r['f1'])} | "
        f"{r['clean_layers_flagged']} / {summary['clean_layers']} |"
        for rule, r in summary["rules"].items()
    ]
    class_rows = []
    for name in DEFECT_CLASSES:
        per_rule = [summary["rules"][rule]["classes"][name] for rule in VOTES]
        class_rows.append(
            f"| {name} | {per_rule[0]['instances']} | "
            + " | ".join(_fmt(c["instance_recall"], 2) for c in per_rule)
            + " | "
            + " | ".join(_fmt(c["pixel_recall"], 2) for c in per_rule)
            + " |"
        )
    heads = " | ".join(f"`{r}`" for r in VOTES)
    return "\n".join(
        [
            "# Label quality: heuristic labels against exact truth",
            "",
            f"{produced_by('python -m training prepare')} It scores heuristic labels on synthetic layers whose exact "
            "defect masks are known. Regenerate:",
            "",
            "```bash",
            *([quality.data_command] if quality.data_command else []),
            quality.command,
            "```",
            "",
            f"{summary['layers']} layers ({summary['clean_layers']} defect-free). Labels: per light image, the "
            "quadratic trend is removed and the image band-passed (small blur minus large blur), bright and dark "
            "anomalies are thresholded in robust standard deviations and cleaned by opening, closing and a minimum "
            f"area, then the three lights vote. Settings: `{summary.get('label_config', {})}`. "
            f"`prepare` wrote `{summary['chosen']}` labels; all three rules are measured here. Pixel scores are "
            "micro-averaged over all layers; an instance counts as found when any labelled pixel touches it.",
            "",
            "## Findings",
            "",
            *[f"- {line}" for line in findings(summary)],
            "",
            "## Per vote rule",
            "",
            "| vote | lights needed | label density | truth density | precision | recall | IoU | F1 | "
            "clean layers flagged |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Per defect class",
            "",
            f"| class | instances | found: {heads} | pixel recall: {heads} |",
            "|---|---|---|---|---|---|---|---|",
            *class_rows,
            "",
            f"![scores per vote rule]({METRICS_PNG})",
            "",
            f"![examples]({EXAMPLES_PNG})" if quality.examples else "",
            "",
            "Synthetic layers are not a real printer: these numbers say how the heuristic behaves on our generator's "
            "physics, not on your machine's images.",
            "",
        ]
    )


def write_report(quality: LabelQuality, report_dir: Path) -> dict[str, str]:
    """Write label_quality.md and its figures into `report_dir`; returns their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    md, metrics_png, examples_png = report_dir / MARKDOWN, report_dir / METRICS_PNG, report_dir / EXAMPLES_PNG
    plot_metrics(quality.summary, metrics_png)
    if quality.examples:
        plot_examples(quality.examples, examples_png)
    write_atomic(md, render(quality).encode())
    log.info("label quality report: %s", md)
    return {"markdown": str(md), "figure": str(metrics_png), "examples": str(examples_png)}
