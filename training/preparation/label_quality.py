"""What heuristic labels are worth: each vote rule measured against the generator's exact truth.

`prepare` gathers the statistics of each layer here, writes their summary as label_quality.json into the prepared
folder, and `training.reports.label_quality` renders the `LabelQuality` result as label_quality.md with two figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.inference.classes import DEFECT_CLASSES
from training.learning.metrics import Counts, components_found, confusion
from training.preparation.labels import VOTES


@dataclass(frozen=True)
class Example:
    """A layer shown in the report's overlay figure."""

    layer_id: str
    stack: np.ndarray  # (H, W, 3) stacked image, channel k = light k
    votes: np.ndarray  # (H, W) number of lights that flag each pixel
    truth: np.ndarray  # (H, W) class map (0 = no defect)


@dataclass(frozen=True)
class LabelQuality:
    """The heuristic labels measured against exact truth, with what made them: what the report renders."""

    summary: dict  # `summarize` output (with the label settings under "label_config"), as label_quality.json holds
    examples: list[Example]  # layers for the overlay figure; none: no figure
    command: str  # the `prepare` command
    data_command: str | None = None  # the command that made the raw data, when recorded


def layer_stats(votes: np.ndarray, truth: np.ndarray) -> dict:
    """Per-rule confusion counts and per-class recall counts for one layer.

    votes: (H, W) number of lights that flag each pixel; truth: (H, W) class map (0 = no defect).
    """
    reference = truth > 0
    stats: dict = {"clean": not reference.any(), "rules": {}}
    for rule, needed in VOTES.items():
        label = votes >= needed
        per_class = {}
        for class_id, name in enumerate(DEFECT_CLASSES, start=1):
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
        classes = {name: {"pixels": 0, "covered": 0, "found": 0, "instances": 0} for name in DEFECT_CLASSES}
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


def pick_examples(stats: list[tuple[str, dict]], n: int = 3) -> list[str]:
    """Layer ids with the most distinct defect classes (ties by id), for the overlay figure."""
    ranked = sorted(stats, key=lambda item: (-len(item[1]["rules"]["or"]["classes"]), item[0]))
    return [layer_id for layer_id, _ in ranked[:n]]
