"""Scores of binary masks against a reference, from confusion counts computed once (as smp's metrics do)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def predicted_fraction(self) -> float:
        return _ratio(self.tp + self.fp, self.total)

    def reference_fraction(self) -> float:
        return _ratio(self.tp + self.fn, self.total)


def _ratio(num: int, den: int) -> float:
    """num / den, and 1.0 when both are zero (nothing to find, nothing claimed: a perfect score)."""
    if den == 0:
        return 1.0 if num == 0 else float("nan")
    return num / den


def confusion(predicted: np.ndarray, reference: np.ndarray) -> Counts:
    """Pixel confusion counts of two boolean masks of the same shape."""
    if predicted.shape != reference.shape:
        raise ValueError(f"mask shapes differ: predicted {predicted.shape}, reference {reference.shape}")
    p, r = predicted.astype(bool), reference.astype(bool)
    tp = int(np.count_nonzero(p & r))
    fp = int(np.count_nonzero(p & ~r))
    fn = int(np.count_nonzero(~p & r))
    return Counts(tp, fp, fn, int(p.size - tp - fp - fn))


FOUND_COVERAGE = 0.25  # a true defect counts as found when the predicted mask covers at least this share of it


def components_found(predicted: np.ndarray, reference: np.ndarray, coverage: float = FOUND_COVERAGE) -> tuple[int, int]:
    """(found, total): connected components of `reference` of which `predicted` covers at least `coverage` of the
    pixels; with coverage 0, those that any predicted pixel touches (the looser figure)."""
    n, labels = cv2.connectedComponents(reference.astype(np.uint8), connectivity=8)
    if n <= 1:
        return 0, 0
    sizes = np.bincount(labels.ravel(), minlength=n)[1:]
    covered = np.bincount(labels[predicted.astype(bool) & (labels > 0)], minlength=n)[1:]
    found = covered > 0 if coverage <= 0 else covered >= coverage * sizes
    return int(found.sum()), n - 1
