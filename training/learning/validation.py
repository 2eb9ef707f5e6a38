"""Validation during training: the scores of the model on whole validation layers at a fixed threshold, used to
choose the best epoch and to stop early. `evaluate` chooses the served threshold later, on the finished model."""

from __future__ import annotations

from dataclasses import dataclass

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

    def row(self) -> dict[str, float]:
        """The scores written to metrics.csv and TensorBoard; f1_vs_truth only when the layers have exact truth."""
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
        return row


def validate(
    model: torch.nn.Module, records: list[LayerRecord], config: ModelConfig, device: torch.device
) -> Validation:
    """Pixel counts and defect-level recall at VALIDATION_THRESHOLD over whole validation layers."""
    model.eval()
    counts, truth_counts = Counts(), Counts()
    found = instances = 0
    for record in records:
        predicted = defect_mask(predict_probabilities(model, record.stack, config, device), VALIDATION_THRESHOLD)
        counts = counts + confusion(predicted, record.label > 0)
        f, n = components_found(predicted, record.label > 0)
        found, instances = found + f, instances + n
        if record.truth is not None:
            truth_counts = truth_counts + confusion(predicted, record.truth > 0)
    model.train()
    has_truth = any(r.truth is not None for r in records)
    return Validation(counts, found, instances, truth_counts if has_truth else None)
