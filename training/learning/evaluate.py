"""Evaluation: a precision-recall curve over thresholds, the decision threshold chosen by a rule and written into
the checkpoint, and a report against exact truth and against the heuristic labels, with the heuristic labeller
itself as a baseline detector."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.inference.answer import defect_mask
from training.inference.images import write_atomic
from training.inference.model import load_checkpoint, save_checkpoint
from training.inference.tiling import predict_layers
from training.learning.dataset import LayerRecord, load_split
from training.learning.metrics import Counts, components_found, confusion
from training.renderer.defects import CLASSES
from training.reports.figures import display_stack, error_overlay, pyplot, save_png

log = logging.getLogger(__name__)

BINS = 1000  # thresholds are searched on a grid of 1/BINS
GRID = (np.arange(BINS + 1) / BINS).astype(np.float32)


@dataclass(frozen=True)
class Rule:
    name: str  # "max-f1" or "min-recall"
    min_recall: float | None = None

    def __str__(self) -> str:
        return self.name if self.min_recall is None else f"{self.name} {self.min_recall:g}"


def parse_rule(words: list[str]) -> Rule:
    """`max-f1`, or `min-recall R` (the best precision with recall >= R)."""
    if words == ["max-f1"]:
        return Rule("max-f1")
    if len(words) == 2 and words[0] == "min-recall":
        try:
            value = float(words[1])
        except ValueError:
            value = -1.0
        if 0.0 < value <= 1.0:
            return Rule("min-recall", value)
    raise ValueError(f"rule must be 'max-f1' or 'min-recall R' with 0 < R <= 1, got {' '.join(words)!r}")


@dataclass
class Curve:
    """Pixel counts above each threshold on the grid: thresholds[i] = i / BINS."""

    positives: np.ndarray  # (BINS + 1,) histogram of probabilities on reference-positive pixels
    negatives: np.ndarray

    @classmethod
    def empty(cls) -> Curve:
        return cls(np.zeros(BINS + 1, np.int64), np.zeros(BINS + 1, np.int64))

    def add(self, probabilities: np.ndarray, reference: np.ndarray) -> None:
        # bin i holds the pixels that `probability >= threshold` counts positive at threshold i/BINS but not at
        # (i+1)/BINS, with thresholds compared in float32 exactly as the decision is made
        index = np.searchsorted(GRID, probabilities.astype(np.float32), side="right") - 1
        self.positives += np.bincount(index[reference], minlength=BINS + 1)
        self.negatives += np.bincount(index[~reference], minlength=BINS + 1)

    def table(self) -> dict[str, np.ndarray]:
        tp = np.cumsum(self.positives[::-1])[::-1]  # predicted positive at threshold i: probability >= i / BINS
        fp = np.cumsum(self.negatives[::-1])[::-1]
        fn = self.positives.sum() - tp
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        return {"threshold": np.arange(BINS + 1) / BINS, "precision": precision, "recall": recall, "f1": f1}

    def choose(self, rule: Rule) -> tuple[float, dict[str, float]]:
        t = self.table()
        valid = (t["threshold"] > 0) & (t["threshold"] < 1)
        if rule.name == "max-f1":
            i = int(np.argmax(np.where(valid, t["f1"], -1)))
        else:
            ok = valid & (t["recall"] >= rule.min_recall)
            if not ok.any():
                raise ValueError(f"no threshold reaches recall {rule.min_recall} on this split")
            i = int(np.argmax(np.where(ok, t["precision"], -1)))
        return float(t["threshold"][i]), {k: float(t[k][i]) for k in ("precision", "recall", "f1")}


def detection_scores(predicted: list[np.ndarray], records: list[LayerRecord]) -> dict[str, Any]:
    """Pixel and defect-level scores of predictions against truth (per class) and against the heuristic labels."""
    truth, heuristic = Counts(), Counts()
    found = {name: [0, 0] for name in CLASSES}
    all_found = all_total = 0
    for mask, record in zip(predicted, records, strict=True):
        heuristic = heuristic + confusion(mask, record.heuristic > 0)
        if record.truth is None:
            continue
        truth = truth + confusion(mask, record.truth > 0)
        for class_id, name in enumerate(CLASSES, start=1):
            f, n = components_found(mask, record.truth == class_id)
            found[name][0] += f
            found[name][1] += n
            all_found, all_total = all_found + f, all_total + n

    def pixel(c: Counts) -> dict[str, float]:
        return {"precision": c.precision(), "recall": c.recall(), "f1": c.f1(), "iou": c.iou()}

    has_truth = any(r.truth is not None for r in records)
    return {
        "vs_truth": {**pixel(truth), "defect_recall": all_found / all_total if all_total else None}
        if has_truth
        else None,
        "vs_heuristic": pixel(heuristic),
        "defect_recall_by_class": {n: (f / t if t else None) for n, (f, t) in found.items()},
        "instances_by_class": {n: t for n, (_, t) in found.items()},
    }


def evaluate_checkpoint(
    path: Path,
    data_dir: Path | None = None,
    split: str = "test",
    threshold_split: str = "val",
    rule: Rule = Rule("max-f1"),
    reference: str = "labels",
) -> dict[str, Any]:
    """Choose the threshold on `threshold_split`, write it into the checkpoint, score `split` at it."""
    config, model, payload = load_checkpoint(path)
    data_dir = Path(data_dir or config.training.get("data", ""))
    if reference not in ("labels", "truth"):
        raise ValueError(f"reference must be 'labels' (what the model was trained on) or 'truth', got {reference!r}")
    source = "truth" if reference == "truth" else config.label_source
    if source == "masks":
        raise ValueError("this model learned from user masks: choose its threshold with --reference truth")
    tune = load_split(data_dir, threshold_split, source)
    curve = Curve.empty()
    for record, probs in zip(tune, predict_layers(model, [r.stack for r in tune], config), strict=True):
        curve.add(probs, record.label > 0)
    threshold, at = curve.choose(rule)
    chosen = (
        f"{rule} on {threshold_split} vs {source} (P {at['precision']:.3f}, R {at['recall']:.3f}, F1 {at['f1']:.3f})"
    )
    config = config.replace(threshold=threshold, threshold_rule=chosen)
    extra = {k: v for k, v in payload.items() if k not in ("model_config", "state_dict")}
    save_checkpoint(Path(path), config, payload["state_dict"], **extra)
    log.info("%s: threshold %.3f (%s), written into the checkpoint", path, threshold, chosen)

    test = load_split(data_dir, split, "heuristic")
    probabilities = predict_layers(model, [r.stack for r in test], config)
    test_curve = Curve.empty()
    for record, probs in zip(test, probabilities, strict=True):
        if record.truth is not None:
            test_curve.add(probs, record.truth > 0)
    predicted = [defect_mask(p, threshold) for p in probabilities]
    return {
        "checkpoint": str(path),
        "label_source": config.label_source,
        "threshold": threshold,
        "threshold_rule": chosen,
        "config": config,
        "scores": detection_scores(predicted, test),
        "curve": test_curve.table(),
        "records": test,
        "predicted": predicted,
        "data": str(data_dir),
    }


def heuristic_baseline(records: list[LayerRecord]) -> dict[str, Any]:
    """The heuristic labeller used directly as a detector."""
    return detection_scores([r.heuristic > 0 for r in records], records)


def plot_pr(results: list[dict[str, Any]], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(5.5, 4.5))
    for result in results:
        t = result["curve"]
        label = f"trained on {result['label_source']}"
        ax.plot(t["recall"], t["precision"], label=label)
        i = round(result["threshold"] * BINS)
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


def plot_examples(results: list[dict[str, Any]], path: Path, n: int = 3) -> None:
    records = results[0]["records"]
    has_truth = all(r.truth is not None for r in records)

    def reference_of(record: LayerRecord) -> np.ndarray:
        return record.truth > 0 if has_truth else record.heuristic > 0

    order = sorted(range(len(records)), key=lambda i: -int(reference_of(records[i]).sum()))
    chosen = sorted(order[:n])
    columns = ["stacked image", *[f"trained on {r['label_source']}" for r in results], "heuristic labels"]
    fig, axes = pyplot().subplots(len(chosen), len(columns), figsize=(3 * len(columns), 3 * len(chosen)), squeeze=False)
    for row, i in enumerate(chosen):
        record = records[i]
        reference = reference_of(record)
        axes[row, 0].imshow(display_stack(record.stack))
        axes[row, 0].set_ylabel(record.layer_id, fontsize=8)
        masks = [r["predicted"][i] for r in results] + [record.heuristic > 0]
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
        truth_cells = "n/a | n/a | n/a | n/a | n/a"
    else:
        dr = "n/a" if t["defect_recall"] is None else f"{t['defect_recall']:.3f}"
        truth_cells = f"{t['precision']:.3f} | {t['recall']:.3f} | {t['f1']:.3f} | {t['iou']:.3f} | {dr}"
    return f"| {name} | {threshold} | {truth_cells} | {h['precision']:.3f} | {h['recall']:.3f} | {h['f1']:.3f} |"


def _commands(results: list[dict[str, Any]], evaluate_command: str) -> list[str]:
    """The commands that produced the data, the models and this report, read from the files they wrote."""
    commands: list[str] = []
    data = Path(results[0]["data"])
    prepare_report = data / "prepare_report.json"
    if prepare_report.exists():
        prepared = json.loads(prepare_report.read_text())
        synth_record = Path(prepared.get("raw", "")).parent / "synth_config.json"
        if synth_record.exists():
            commands.append(json.loads(synth_record.read_text()).get("command", ""))
        commands.append(prepared.get("command", ""))
    for result in results:
        args = Path(result["checkpoint"]).parent / "args.json"
        if args.exists():
            commands.append(json.loads(args.read_text()).get("command", ""))
    commands.append(evaluate_command)
    return [c for c in commands if c]


def write_report(results: list[dict[str, Any]], baseline: dict[str, Any], report: Path, command: str) -> None:
    report.parent.mkdir(parents=True, exist_ok=True)
    stem = report.with_suffix("")
    pr_png, examples_png = Path(f"{stem}_pr.png"), Path(f"{stem}_examples.png")
    plot_pr(results, pr_png)
    plot_examples(results, examples_png)
    rows = [_row(f"U-Net trained on {r['label_source']}", f"{r['threshold']:.3f}", r["scores"]) for r in results] + [
        _row("heuristic labeller (baseline)", "-", baseline)
    ]
    class_head = " | ".join(n.replace("_", " ") for n in CLASSES)
    class_rows = []
    for name, s in [(f"trained on {r['label_source']}", r["scores"]) for r in results] + [
        ("heuristic labeller", baseline)
    ]:
        values = [s["defect_recall_by_class"][n] for n in CLASSES]
        class_rows.append(f"| {name} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in values) + " |")
    instances = results[0]["scores"]["instances_by_class"]
    training_rows = []
    for r in results:
        tr = r["config"].training
        val = tr.get("val", {})
        training_rows.append(
            f"| {r['label_source']} | {tr.get('profile')} | {tr.get('best_epoch')} | {tr.get('train_layers')} | "
            f"{tr.get('pos_weight')} | {val.get('f1', float('nan')):.3f} | {r['threshold_rule']} |"
        )
    test_layers = len(results[0]["records"])
    text = "\n".join(
        [
            "# Results: defect segmentation against exact truth",
            "",
            "Produced by `python -m training evaluate`. Regenerate (data, trainings, this report):",
            "",
            "```bash",
            *_commands(results, command),
            "```",
            "",
            f"Test split: {test_layers} synthetic layers, never seen in training or threshold selection. Each model's "
            "threshold was chosen on the validation split against the labels it was trained on (what a user without "
            "truth can do), then written into its checkpoint. Pixel scores are micro-averaged; a true defect counts as "
            "found when a predicted component overlaps it, so a detector with many false alarms scores well on defect "
            "recall: read it next to precision.",
            "",
            "## Pixel and defect-level scores",
            "",
            "| detector | threshold | P vs truth | R vs truth | F1 vs truth | IoU vs truth | defect recall | P vs heuristic | R vs heuristic | F1 vs heuristic |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Defect-level recall per class (vs truth)",
            "",
            f"| detector | {class_head} |",
            "|---|" + "---|" * len(CLASSES),
            *class_rows,
            "| instances in the test split | " + " | ".join(str(instances[n]) for n in CLASSES) + " |",
            "",
            "## Training",
            "",
            "| labels | profile | best epoch | train layers | pos_weight | val F1 at 0.5 | threshold rule |",
            "|---|---|---|---|---|---|---|",
            *training_rows,
            "",
            f"![precision-recall]({pr_png.name})",
            "",
            f"![examples]({examples_png.name})",
            "",
            "Synthetic layers are not a real printer: these scores describe our generator's physics and defect mix.",
            "",
        ]
    )
    write_atomic(report, text.encode())


def evaluate(
    checkpoints: list[Path],
    report: Path,
    data_dir: Path | None = None,
    split: str = "test",
    threshold_split: str = "val",
    rule: Rule = Rule("max-f1"),
    reference: str = "labels",
    command: str = "",
) -> list[dict[str, Any]]:
    results = [evaluate_checkpoint(p, data_dir, split, threshold_split, rule, reference) for p in checkpoints]
    for result in results:
        plot_pr([result], Path(result["checkpoint"]).parent / "pr_curve.png")
    baseline = heuristic_baseline(results[0]["records"])
    write_report(results, baseline, report, command or shlex.join(["python", "-m", "training", "evaluate"]))
    return results
