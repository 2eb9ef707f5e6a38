"""Validation during training: the scores of the model on whole validation layers at a fixed threshold, used to
choose the best epoch and to stop early. `evaluate` chooses the served threshold later, on the finished model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.inference.config import ModelConfig
from training.inference.postprocess import defect_mask
from training.inference.tiling import predict_probabilities
from training.learning.dataset import LayerRecord
from training.learning.metrics import Counts, components_found, confusion

VALIDATION_THRESHOLD = 0.5  # model selection during training; `evaluate` chooses the served threshold later


@dataclass
class Validation:
    counts: Counts
    found: int
    instances: int
    truth_counts: Counts | None = None
    class_hits: tuple[int, int] | None = None  # (right, judged): class of the truth's defect pixels found

    def row(self) -> dict[str, float]:
        """The scores written to metrics.csv and TensorBoard; f1_vs_truth only when the layers have exact truth,
        class_accuracy only from a class model."""
        c = self.counts
        row = {
            "precision": c.precision(),
            "recall": c.recall(),
            "f1": c.f1(),
            "iou": c.iou(),
            "defect_recall": self.found / self.instances if self.instances else float("nan"),
        }
        if self.truth_counts is not None:
            row["f1_vs_truth"] = self.truth_counts.f1()
        if self.class_hits is not None:
            right, judged = self.class_hits
            row["class_accuracy"] = right / judged if judged else float("nan")
        return row


def validate(
    model: torch.nn.Module, records: list[LayerRecord], config: ModelConfig, device: torch.device
) -> Validation:
    """Pixel counts and defect-level recall at VALIDATION_THRESHOLD over whole validation layers; from a class
    model, how many of the truth's defect pixels it finds have the right class."""
    model.eval()
    counts, truth_counts = Counts(), Counts()
    found = instances = right = judged = 0
    for record in records:
        prediction = predict_probabilities(model, record.stack, config, device)
        predicted = defect_mask(prediction.defect, VALIDATION_THRESHOLD)
        counts = counts + confusion(predicted, record.label > 0)
        f, n = components_found(predicted, record.label > 0)
        found, instances = found + f, instances + n
        if record.truth is not None:
            truth_counts = truth_counts + confusion(predicted, record.truth > 0)
            if prediction.classes is not None:
                on = predicted & (record.truth > 0)
                right += int(np.count_nonzero(prediction.classes.argmax(axis=0)[on] + 1 == record.truth[on]))
                judged += int(np.count_nonzero(on))
    model.train()
    has_truth = any(r.truth is not None for r in records)
    hits = (right, judged) if config.class_names and has_truth else None
    return Validation(counts, found, instances, truth_counts if has_truth else None, hits)
