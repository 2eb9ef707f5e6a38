"""What heuristic labels are worth: each vote rule measured against the generator's exact truth.

Writes `label_quality.md` with two figures into the report folder (docs/ by default) and the numbers as JSON
into the prepared folder. Every figure in the document comes from the run that wrote it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from training.inference.images import write_atomic, write_json
from training.learning.metrics import Counts, components_found, confusion
from training.preparation.labels import VOTES
from training.renderer.defects import CLASSES
from training.reports.figures import display_stack, error_overlay, pyplot, save_png

log = logging.getLogger(__name__)


def layer_stats(votes: np.ndarray, truth: np.ndarray) -> dict:
    """Per-rule confusion counts and per-class recall counts for one layer.

    votes: (H, W) number of lights that flag each pixel; truth: (H, W) class map (0 = no defect).
    """
    reference = truth > 0
    stats: dict = {"clean": not reference.any(), "rules": {}}
    for rule, needed in VOTES.items():
        label = votes >= needed
        per_class = {}
        for class_id, name in enumerate(CLASSES, start=1):
            cls = truth == class_id
            if cls.any():
                found, total = components_found(label, cls)
                per_class[name] = {
                    "pixels": int(cls.sum()),
                    "covered": int((label & cls).sum()),
                    "found": found,
                    "instances": total,
                }
        stats["rules"][rule] = {
            "counts": confusion(label, reference).__dict__,
            "classes": per_class,
            "flagged": bool(label.any()),
        }
    return stats


def summarize(stats: list[tuple[str, dict]], chosen: str) -> dict:
    """Aggregate (micro-average) layer statistics per vote rule."""
    summary: dict = {
        "layers": len(stats),
        "clean_layers": sum(s["clean"] for _, s in stats),
        "chosen": chosen,
        "rules": {},
    }
    for rule in VOTES:
        counts = Counts()
        classes = {name: {"pixels": 0, "covered": 0, "found": 0, "instances": 0} for name in CLASSES}
        clean_flagged = 0
        for _, layer in stats:
            entry = layer["rules"][rule]
            counts = counts + Counts(**entry["counts"])
            clean_flagged += layer["clean"] and entry["flagged"]
            for name, c in entry["classes"].items():
                for key in classes[name]:
                    classes[name][key] += c[key]
        summary["rules"][rule] = {
            "votes_needed": VOTES[rule],
            "label_density": counts.predicted_fraction(),
            "truth_density": counts.reference_fraction(),
            "precision": counts.precision(),
            "recall": counts.recall(),
            "iou": counts.iou(),
            "f1": counts.f1(),
            "clean_layers_flagged": clean_flagged,
            "classes": {
                name: {
                    "instances": c["instances"],
                    "instance_recall": c["found"] / c["instances"] if c["instances"] else None,
                    "pixel_recall": c["covered"] / c["pixels"] if c["pixels"] else None,
                }
                for name, c in classes.items()
            },
        }
    return summary


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
        f"where the truth has {a['truth_density']:.3%}; recall {a['recall']:.3f} (`and`) vs {m['recall']:.3f} (`majority`).",
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


def _plot_metrics(summary: dict, path: Path) -> None:
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
        values = [summary["rules"][rule]["classes"][n]["instance_recall"] or 0.0 for n in CLASSES]
        axes[1].bar(np.arange(len(CLASSES)) + i * width, values, width, label=rule)
    axes[1].set_xticks(np.arange(len(CLASSES)) + width, [n.replace("_", "\n") for n in CLASSES], fontsize=8)
    axes[1].set_ylim(0, 1)
    axes[1].set_title("defect instances found, per class")
    fig.tight_layout()
    save_png(fig, path)


def _plot_examples(examples: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    from matplotlib.colors import ListedColormap

    plt = pyplot()
    classes_cmap = ListedColormap(["black", *plt.get_cmap("tab10").colors[: len(CLASSES)]])
    columns = ["stacked image", "truth (colour = class)", *[f"vote: {r}" for r in VOTES]]
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(3 * len(columns), 3 * len(examples)), squeeze=False)
    for row, (layer_id, stack, votes, truth) in enumerate(examples):
        reference = truth > 0
        axes[row, 0].imshow(display_stack(stack))
        axes[row, 0].set_ylabel(layer_id, fontsize=8)
        axes[row, 1].imshow(truth, cmap=classes_cmap, vmin=0, vmax=len(CLASSES), interpolation="nearest")
        for col, needed in enumerate(VOTES.values(), start=2):
            axes[row, col].imshow(error_overlay(stack, votes >= needed, reference))
        for col, title in enumerate(columns):
            axes[0, col].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("green: label and truth agree; red: labelled but not a defect; blue: defect missed", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def pick_examples(stats: list[tuple[str, dict]], n: int = 3) -> list[str]:
    """Layer ids with the most distinct defect classes (ties by id), for the overlay figure."""
    ranked = sorted(stats, key=lambda item: (-len(item[1]["rules"]["or"]["classes"]), item[0]))
    return [layer_id for layer_id, _ in ranked[:n]]


def write_report(
    summary: dict, examples: list, data_dir: Path, report_dir: Path, command: str, data_command: str | None = None
) -> dict:
    """Write the Markdown report, its two figures and the JSON numbers; returns their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    metrics_png, examples_png = report_dir / "label_quality.png", report_dir / "label_quality_examples.png"
    _plot_metrics(summary, metrics_png)
    if examples:
        _plot_examples(examples, examples_png)
    rows = [
        f"| `{rule}` | {r['votes_needed']} of 3 | {r['label_density']:.3%} | {r['truth_density']:.3%} | "
        f"{_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['iou'])} | {_fmt(r['f1'])} | "
        f"{r['clean_layers_flagged']} / {summary['clean_layers']} |"
        for rule, r in summary["rules"].items()
    ]
    class_rows = []
    for name in CLASSES:
        per_rule = [summary["rules"][rule]["classes"][name] for rule in VOTES]
        class_rows.append(
            f"| {name} | {per_rule[0]['instances']} | "
            + " | ".join(_fmt(c["instance_recall"], 2) for c in per_rule)
            + " | "
            + " | ".join(_fmt(c["pixel_recall"], 2) for c in per_rule)
            + " |"
        )
    heads = " | ".join(f"`{r}`" for r in VOTES)
    text = "\n".join(
        [
            "# Label quality: heuristic labels against exact truth",
            "",
            "Generated by `python -m training prepare` from synthetic layers whose exact defect masks are known. Regenerate:",
            "",
            "```bash",
            *([data_command] if data_command else []),
            command,
            "```",
            "",
            f"{summary['layers']} layers ({summary['clean_layers']} defect-free). Labels: per light image, the quadratic "
            "trend is removed and the image band-passed (small blur minus large blur), bright and dark anomalies are "
            "thresholded in robust standard deviations and cleaned by opening, closing and a minimum area, then the "
            f"three lights vote. Settings: `{summary.get('label_config', {})}`. "
            f"`prepare` wrote `{summary['chosen']}` labels; all three rules are measured here. Pixel scores are "
            "micro-averaged over all layers; an instance counts as found when any labelled pixel touches it.",
            "",
            "## Findings",
            "",
            *[f"- {line}" for line in findings(summary)],
            "",
            "## Per vote rule",
            "",
            "| vote | lights needed | label density | truth density | precision | recall | IoU | F1 | clean layers flagged |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Per defect class",
            "",
            f"| class | instances | found: {heads} | pixel recall: {heads} |",
            "|---|---|---|---|---|---|---|---|",
            *class_rows,
            "",
            f"![scores per vote rule]({metrics_png.name})",
            "",
            f"![examples]({examples_png.name})" if examples else "",
            "",
            "Synthetic layers are not a real printer: these numbers say how the heuristic behaves on our generator's "
            "physics, not on your machine's images.",
            "",
        ]
    )
    md = report_dir / "label_quality.md"
    write_atomic(md, text.encode())
    numbers = data_dir / "label_quality.json"
    write_json(numbers, summary)
    log.info("label quality report: %s", md)
    return {"markdown": str(md), "figure": str(metrics_png), "examples": str(examples_png), "json": str(numbers)}
