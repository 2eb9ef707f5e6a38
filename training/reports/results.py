"""docs/results.md: the evaluated checkpoints side by side with the heuristic labeller, against exact truth and
against the heuristic labels, with a precision-recall figure and example overlays."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.inference.classes import DEFECT_CLASSES, class_label
from training.inference.images import write_atomic
from training.learning.metrics import FOUND_COVERAGE
from training.reports.figures import display_stack, error_overlay, pyplot, save_png
from training.reports.provenance import produced_by

if TYPE_CHECKING:  # the command's module imports this one to write its report
    from training.learning.dataset import LayerRecord
    from training.learning.evaluate import Evaluation


def plot_pr(results: list[Evaluation], path: Path) -> None:
    """Each model's precision-recall curve against exact truth, with a dot at its chosen threshold."""
    fig, ax = pyplot().subplots(figsize=(5.5, 4.5))
    for result in results:
        t = result.curve
        label = f"trained on {result.label_source}"
        ax.plot(t["recall"], t["precision"], label=label)
        i = round(result.threshold * (len(t["threshold"]) - 1))  # the curve's thresholds are i / BINS
        ax.plot(t["recall"][i], t["precision"][i], "o", color=ax.lines[-1].get_color())
    ax.set_xlabel("recall (pixels, vs exact truth)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="dot: chosen threshold", fontsize=8)
    ax.set_title("precision-recall on the test split")
    fig.tight_layout()
    save_png(fig, path)


def plot_examples(results: list[Evaluation], path: Path, n: int = 3) -> None:
    """Error overlays of each model and of the heuristic labels on the `n` layers with the most defect pixels."""
    records = results[0].records
    has_truth = all(r.truth is not None for r in records)

    def reference_of(record: LayerRecord) -> np.ndarray:
        return record.truth > 0 if has_truth else record.heuristic > 0

    order = sorted(range(len(records)), key=lambda i: -int(reference_of(records[i]).sum()))
    chosen = sorted(order[:n])
    columns = ["stacked image", *[f"trained on {r.label_source}" for r in results], "heuristic labels"]
    fig, axes = pyplot().subplots(len(chosen), len(columns), figsize=(3 * len(columns), 3 * len(chosen)), squeeze=False)
    for row, i in enumerate(chosen):
        record = records[i]
        reference = reference_of(record)
        axes[row, 0].imshow(display_stack(record.stack))
        axes[row, 0].set_ylabel(record.layer_id, fontsize=8)
        masks = [r.predicted[i] for r in results] + [record.heuristic > 0]
        for col, mask in enumerate(masks, start=1):
            axes[row, col].imshow(error_overlay(record.stack, mask, reference))
    for col, title in enumerate(columns):
        axes[0, col].set_title(title, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    against = "exact truth" if has_truth else "heuristic labels (no truth)"
    fig.suptitle(f"against {against} - green: found; red: false alarm; blue: missed", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def _row(name: str, threshold: str, s: dict[str, Any]) -> str:
    t, h = s["vs_truth"], s["vs_heuristic"]
    if t is None:  # real data: no exact truth
        truth_cells = "n/a | n/a | n/a | n/a | n/a | n/a"
    else:
        dr, touched = ("n/a" if t[k] is None else f"{t[k]:.3f}" for k in ("defect_recall", "defect_recall_touched"))
        truth_cells = f"{t['precision']:.3f} | {t['recall']:.3f} | {t['f1']:.3f} | {t['iou']:.3f} | {dr} | {touched}"
    return f"| {name} | {threshold} | {truth_cells} | {h['precision']:.3f} | {h['recall']:.3f} | {h['f1']:.3f} |"


def regenerate_commands(results: list[Evaluation], evaluate_command: str) -> list[str]:
    """The commands that produced the data, the models and this report, read from the files they wrote."""
    commands: list[str] = []
    prepare_report = results[0].data / "prepare_report.json"
    if prepare_report.exists():
        prepared = json.loads(prepare_report.read_text())
        synth_record = Path(prepared.get("raw", "")).parent / "synth_config.json"
        if synth_record.exists():
            commands.append(json.loads(synth_record.read_text()).get("command", ""))
        commands.append(prepared.get("command", ""))
    for result in results:
        args = result.checkpoint.parent / "args.json"
        if args.exists():
            commands.append(json.loads(args.read_text()).get("command", ""))
    commands.append(evaluate_command)
    return [c for c in commands if c]


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def class_section(results: list[Evaluation], confusion_png: str | None = None) -> list[str]:
    """The class models' scores per class: pixel IoU and recall of each class's own mask, and how often a detected
    region is given its true class (the confusion matrix, in a figure beside the report)."""
    scored = [r for r in results if r.classes is not None]
    if not scored:
        return []
    head = " | ".join(class_label(n) for n in DEFECT_CLASSES)
    lines = [
        "## Per class (class models)",
        "",
        f"A true defect counts as found by its class when the predicted mask of that class covers at least "
        f"{FOUND_COVERAGE:.0%} of it. A detected region's class is the class holding most of its defect probability "
        "(as the answer gives it); its true class is the truth class under most of its pixels.",
        "",
        f"| model | score | {head} |",
        "|---|---|" + "---|" * len(DEFECT_CLASSES),
    ]
    for r in scored:
        c = r.classes
        name = f"trained on {r.label_source}"
        lines.append(
            f"| {name} | defect recall of its class | "
            + " | ".join(_score(c["defect_recall"].get(n)) for n in DEFECT_CLASSES)
            + " |"
        )
        lines.append(
            f"| {name} | pixel IoU | " + " | ".join(_score(c["pixel_iou"].get(n)) for n in DEFECT_CLASSES) + " |"
        )
    lines.append("")
    for r in scored:
        c = r.classes
        right = "n/a" if c["regions_right"] is None else f"{c['regions_right']:.1%}"
        lines.append(
            f"Trained on {r.label_source}: {right} of the {c['regions_matched']} detected regions that lie on a true "
            f"defect are given its class ({c['regions_unmatched']} detected regions lie on none)."
        )
    lines.append("")
    if confusion_png:
        lines += [f"![component classes]({confusion_png})", ""]
    return lines


def plot_confusion(results: list[Evaluation], path: Path) -> None:
    """Each class model's matrix of detected regions: true class (rows) by the class the model gave (columns)."""
    scored = [r for r in results if r.classes is not None]
    fig, axes = pyplot().subplots(1, len(scored), figsize=(5.2 * len(scored), 4.6), squeeze=False)
    labels = [class_label(n) for n in DEFECT_CLASSES]
    for ax, r in zip(axes[0], scored, strict=True):
        matrix = np.asarray(r.classes["confusion"])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("class given by the model")
        ax.set_ylabel("true class")
        ax.set_title(f"detected regions, trained on {r.label_source}")
    fig.tight_layout()
    save_png(fig, path)


def render(
    results: list[Evaluation],
    baseline: dict[str, Any],
    commands: list[str],
    pr_png: str,
    examples_png: str,
    confusion_png: str | None = None,
) -> str:
    """The Markdown of the report; `baseline` is the heuristic labeller's scores, the figures are named by file."""
    rows = [_row(f"U-Net trained on {r.label_source}", f"{r.threshold:.3f}", r.scores) for r in results] + [
        _row("heuristic labeller (baseline)", "-", baseline)
    ]
    class_head = " | ".join(n.replace("_", " ") for n in DEFECT_CLASSES)
    class_rows = []
    for name, s in [(f"trained on {r.label_source}", r.scores) for r in results] + [("heuristic labeller", baseline)]:
        values = [s["defect_recall_by_class"][n] for n in DEFECT_CLASSES]
        class_rows.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in values) + " |")
    instances = results[0].scores["instances_by_class"]
    training_rows = []
    for r in results:
        tr = r.config.training
        val = tr.get("val", {})
        training_rows.append(
            f"| {r.label_source} | {tr.get('profile')} | {tr.get('best_epoch')} | {tr.get('train_layers')} | "
            f"{tr.get('pos_weight')} | {val.get('f1', float('nan')):.3f} | {r.threshold_rule} |"
        )
    test_layers = len(results[0].records)
    return "\n".join(
        [
            "# Results: defect segmentation against exact truth",
            "",
            f"{produced_by('python -m training evaluate')} Regenerate (data, trainings, this report):",
            "",
            "```bash",
            *commands,
            "```",
            "",
            f"Test split: {test_layers} synthetic layers, never seen in training or threshold selection. Each model's "
            "threshold was chosen on the validation split against the labels it was trained on (what a user without "
            "truth can do) and written to decision.json beside its checkpoint. Pixel scores are micro-averaged; a true "
            f"defect counts as found when the predicted mask covers at least {FOUND_COVERAGE:.0%} of it (defect "
            "recall), or any pixel of it (touched: the looser figure, which a detector with many false alarms scores "
            "well on).",
            "",
            "## Pixel and defect-level scores",
            "",
            "| detector | threshold | P vs truth | R vs truth | F1 vs truth | IoU vs truth | defect recall | touched | "
            "P vs heuristic | R vs heuristic | F1 vs heuristic |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Defect-level recall per class (vs truth)",
            "",
            f"| detector | {class_head} |",
            "|---|" + "---|" * len(DEFECT_CLASSES),
            *class_rows,
            "| instances in the test split | " + " | ".join(str(instances[n]) for n in DEFECT_CLASSES) + " |",
            "",
            *class_section(results, confusion_png),
            "## Training",
            "",
            "| labels | profile | best epoch | train layers | pos_weight | val F1 at 0.5 | threshold rule |",
            "|---|---|---|---|---|---|---|",
            *training_rows,
            "",
            f"![precision-recall]({pr_png})",
            "",
            f"![examples]({examples_png})",
            "",
            "Synthetic layers are not a real printer: these scores describe our generator's physics and defect mix.",
            "",
        ]
    )


def write_report(results: list[Evaluation], baseline: dict[str, Any], report: Path, command: str) -> None:
    """Write the report to `report` and its figures beside it (`<stem>_pr.png`, `<stem>_examples.png`, and for
    class models `<stem>_classes.png`)."""
    report.parent.mkdir(parents=True, exist_ok=True)
    stem = report.with_suffix("")
    pr_png, examples_png = Path(f"{stem}_pr.png"), Path(f"{stem}_examples.png")
    plot_pr(results, pr_png)
    plot_examples(results, examples_png)
    confusion_png = None
    if any(r.classes is not None for r in results):
        confusion_png = Path(f"{stem}_classes.png")
        plot_confusion(results, confusion_png)
    text = render(results, baseline, regenerate_commands(results, command), pr_png.name, examples_png.name,
                  confusion_png.name if confusion_png else None)  # fmt: skip
    write_atomic(report, text.encode())
