"""Evaluation: a precision-recall curve over thresholds, the decision threshold chosen by a rule and written as
decision.json beside the checkpoint (which stays as `train` wrote it), and scores against exact truth and against the
heuristic labels, with the heuristic labeller itself as a baseline detector. `training.reports.results` renders them
as a report."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.inference.classes import DEFECT_CLASSES
from training.inference.config import Decision, ModelConfig
from training.inference.model import load_checkpoint, state_digest
from training.inference.postprocess import class_map, class_of_regions, defect_mask
from training.inference.tiling import defect_probabilities, predict_layers
from training.learning.dataset import LayerRecord, load_split
from training.learning.metrics import Counts, components_found, confusion
from training.reports import results as results_report

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


@dataclass(frozen=True)
class Evaluation:
    """One checkpoint scored on a split at the threshold chosen for it: what `training.reports.results` renders."""

    checkpoint: Path
    label_source: str  # what the model learned from
    threshold: float
    threshold_rule: str  # how the threshold was chosen, with the scores it had there
    config: ModelConfig  # the checkpoint's config with the decision applied
    scores: dict[str, Any]  # `detection_scores` on the split
    curve: dict[str, np.ndarray]  # `Curve.table()` against exact truth on the split (all 1.0 without truth)
    records: list[LayerRecord]  # the split's layers
    predicted: list[np.ndarray]  # (H, W) bool defect mask per layer, at `threshold`
    data: Path  # the prepared folder
    classes: dict[str, Any] | None = None  # `class_scores` on the split, for a class model on layers with truth


def detection_scores(predicted: list[np.ndarray], records: list[LayerRecord]) -> dict[str, Any]:
    """Pixel and defect-level scores of predictions against truth (per class) and against the heuristic labels."""
    truth, heuristic = Counts(), Counts()
    found = {name: [0, 0] for name in DEFECT_CLASSES}
    all_found = all_touched = all_total = 0
    for mask, record in zip(predicted, records, strict=True):
        heuristic = heuristic + confusion(mask, record.heuristic > 0)
        if record.truth is None:
            continue
        truth = truth + confusion(mask, record.truth > 0)
        for class_id, name in enumerate(DEFECT_CLASSES, start=1):
            f, n = components_found(mask, record.truth == class_id)
            touched, _ = components_found(mask, record.truth == class_id, coverage=0.0)
            found[name][0] += f
            found[name][1] += n
            all_found, all_touched, all_total = all_found + f, all_touched + touched, all_total + n

    def pixel(c: Counts) -> dict[str, float]:
        return {"precision": c.precision(), "recall": c.recall(), "f1": c.f1(), "iou": c.iou()}

    has_truth = any(r.truth is not None for r in records)
    return {
        "vs_truth": {
            **pixel(truth),
            "defect_recall": all_found / all_total if all_total else None,
            "defect_recall_touched": all_touched / all_total if all_total else None,
        }
        if has_truth
        else None,
        "vs_heuristic": pixel(heuristic),
        "defect_recall_by_class": {n: (f / t if t else None) for n, (f, t) in found.items()},
        "instances_by_class": {n: t for n, (_, t) in found.items()},
    }


def _iou(c: Counts) -> float | None:
    """IoU, or None where neither the truth nor the prediction holds the class."""
    return c.iou() if c.tp + c.fp + c.fn else None


def class_scores(
    predicted: list[np.ndarray], class_maps: list[np.ndarray], region_classes: list[np.ndarray],
    records: list[LayerRecord], names: tuple[str, ...],
) -> dict[str, Any]:  # fmt: skip
    """A class model's scores against the truth's classes. `predicted`: each layer's defect mask; `class_maps`: its
    class map (0, or 1 + each pixel's most probable class); `region_classes`: each mask region's class index per
    pixel (-1 outside), as the answer names regions. Per class: pixel IoU of the class maps, and defect recall where
    a true defect counts as found when the predicted mask *of its class* covers FOUND_COVERAGE of it. The component
    confusion matrix: each predicted region that overlaps truth, by the truth class holding most of its pixels (row)
    and the class the model gave it (column)."""
    k = len(names)
    pixels = [Counts() for _ in range(k)]
    found = [[0, 0] for _ in range(k)]
    matrix = np.zeros((k, k), dtype=np.int64)
    unmatched = 0  # predicted regions on no true defect
    for mask, classes, regions, record in zip(predicted, class_maps, region_classes, records, strict=True):
        if record.truth is None:
            continue
        for c in range(k):
            pixels[c] = pixels[c] + confusion(classes == c + 1, record.truth == c + 1)
            f, n = components_found(classes == c + 1, record.truth == c + 1)
            found[c][0] += f
            found[c][1] += n
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for label in range(1, count):
            inside = labels == label
            true = np.bincount(record.truth[inside], minlength=k + 1)[1 : k + 1]
            if true.sum() == 0:
                unmatched += 1
                continue
            matrix[int(true.argmax()), int(regions[inside][0])] += 1
    matched = int(matrix.sum())
    return {
        "classes": list(names),
        "pixel_iou": {n: _iou(pixels[c]) for c, n in enumerate(names)},
        "defect_recall": {n: found[c][0] / found[c][1] if found[c][1] else None for c, n in enumerate(names)},
        "instances": {n: found[c][1] for c, n in enumerate(names)},
        "confusion": matrix.tolist(),  # rows: true class, columns: predicted class, of matched regions
        "regions_right": float(np.trace(matrix) / matched) if matched else None,
        "regions_matched": matched,
        "regions_unmatched": unmatched,
    }


def evaluate_checkpoint(
    path: Path,
    data_dir: Path | None = None,
    split: str = "test",
    threshold_split: str = "val",
    rule: Rule = Rule("max-f1"),
    reference: str = "labels",
    command: str = "",
) -> Evaluation:
    """Choose the threshold on `threshold_split`, write it to decision.json beside the checkpoint, score `split`
    at it."""
    config, model, payload = load_checkpoint(path)
    data_dir = Path(data_dir or config.training.get("data", ""))
    if reference not in ("labels", "truth"):
        raise ValueError(f"reference must be 'labels' (what the model was trained on) or 'truth', got {reference!r}")
    source = "truth" if reference == "truth" else config.label_source
    if source == "masks":
        raise ValueError("this model learned from user masks: choose its threshold with --reference truth")
    tune = load_split(data_dir, threshold_split, source)
    curve = Curve.empty()
    for record, probs in zip(tune, defect_probabilities(model, [r.stack for r in tune], config), strict=True):
        curve.add(probs, record.label > 0)
    threshold, at = curve.choose(rule)
    chosen = (
        f"{rule} on {threshold_split} vs {source} (P {at['precision']:.3f}, R {at['recall']:.3f}, F1 {at['f1']:.3f})"
    )
    decision = Decision(threshold, chosen, state_digest(payload["state_dict"]), command)
    written = decision.write(Path(path))
    config = config.with_decision(decision)
    log.info("%s: threshold %.3f (%s), written to %s", path, threshold, chosen, written)

    test = load_split(data_dir, split, "heuristic")
    predictions = predict_layers(model, [r.stack for r in test], config)
    test_curve = Curve.empty()
    for record, prediction in zip(test, predictions, strict=True):
        if record.truth is not None:
            test_curve.add(prediction.defect, record.truth > 0)
    predicted = [defect_mask(p.defect, threshold) for p in predictions]
    classes = None
    if config.class_names and any(r.truth is not None for r in test):
        maps = [class_map(m, p.classes) for m, p in zip(predicted, predictions, strict=True)]
        regions = [
            best[labels]
            for labels, best in (class_of_regions(m, p.classes) for m, p in zip(predicted, predictions, strict=True))
        ]
        classes = class_scores(predicted, maps, regions, test, config.class_names)
    return Evaluation(
        checkpoint=Path(path),
        label_source=config.label_source,
        threshold=threshold,
        threshold_rule=chosen,
        config=config,
        scores=detection_scores(predicted, test),
        curve=test_curve.table(),
        records=test,
        predicted=predicted,
        data=data_dir,
        classes=classes,
    )


def heuristic_baseline(records: list[LayerRecord]) -> dict[str, Any]:
    """The heuristic labeller used directly as a detector."""
    return detection_scores([r.heuristic > 0 for r in records], records)


def evaluate(
    checkpoints: list[Path],
    report: Path,
    data_dir: Path | None = None,
    split: str = "test",
    threshold_split: str = "val",
    rule: Rule = Rule("max-f1"),
    reference: str = "labels",
    command: str = "",
) -> list[Evaluation]:
    """Evaluate each checkpoint; write its pr_curve.png beside it and one report comparing them to `report`."""
    command = command or shlex.join(["python", "-m", "training", "evaluate"])
    results = [evaluate_checkpoint(p, data_dir, split, threshold_split, rule, reference, command) for p in checkpoints]
    for result in results:
        results_report.plot_pr([result], result.checkpoint.parent / "pr_curve.png")
    baseline = heuristic_baseline(results[0].records)
    results_report.write_report(results, baseline, report, command)
    return results
