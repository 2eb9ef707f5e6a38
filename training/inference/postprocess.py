"""Defect probabilities -> the Detection part of the answer: the decision mask, its connected components, areas
and boxes, and the mask as PNG. The output contract shared by evaluation and the serving handler."""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np

from training.inference.answer import Component, Detection, MaskImage
from training.inference.images import encode_png

SEED_PROBABILITY = 0.5  # a defect must reach even odds somewhere; the threshold, when lower, draws its extent


def defect_mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: the 8-connected regions of pixels at or above the threshold (compared in float32, as the PR
    curve is) that hold at least one pixel at SEED_PROBABILITY or above, or at the threshold when it is higher.

    A threshold chosen for the best F1 is often well below even odds: it draws a defect's full extent, but on
    layers unlike the training layers it also marks wide, faint regions. The seed keeps only regions the model is
    confident of somewhere (hysteresis, as in Canny's edges). Measured on the second renderer's layers: fewer
    clean layers flagged and higher F1 (`docs/generalization.md`)."""
    mask = probabilities >= np.float32(threshold)
    seed = np.float32(max(threshold, SEED_PROBABILITY))
    if seed <= np.float32(threshold) or not mask.any():
        return mask
    seeds = probabilities >= seed
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    kept = np.zeros(count, dtype=bool)
    kept[labels[seeds]] = True
    kept[0] = False
    return kept[labels]


def check_threshold(value: Any) -> float:
    """A request's threshold override as a float strictly between 0 and 1, or a ValueError that says what came."""
    try:
        threshold = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"threshold must be a number between 0 and 1, got {value!r}") from err
    if not 0.0 < threshold < 1.0:  # NaN fails this too
        raise ValueError(f"threshold must be strictly between 0 and 1, got {value!r}")
    return threshold


def components(mask: np.ndarray, probabilities: np.ndarray, limit: int | None = None) -> tuple[list[Component], int]:
    """8-connected components of the mask, largest first (the `limit` largest), each with its box, area and highest
    probability; and how many there are in all. Vectorised: a noisy mask with 10^5 components stays fast."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    total = count - 1
    if total == 0:
        return [], 0
    area = stats[1:, cv2.CC_STAT_AREA]
    left, top = stats[1:, cv2.CC_STAT_LEFT], stats[1:, cv2.CC_STAT_TOP]
    chosen = np.lexsort((left, top, -area))[:limit]  # largest first; ties top to bottom, left to right
    label, value = labels[mask], probabilities[mask]
    order = np.lexsort((value, label))  # by label, then probability: each label's last entry is its peak
    ends = np.searchsorted(label[order], np.arange(1, count), side="right") - 1
    peaks = value[order][ends]  # (total,) peak probability of labels 1..count-1
    found = [
        Component(
            (int(left[i]), int(top[i]), int(stats[i + 1, cv2.CC_STAT_WIDTH]), int(stats[i + 1, cv2.CC_STAT_HEIGHT])),
            int(area[i]),
            round(float(peaks[i]), 4),
        )
        for i in chosen
    ]
    return found, total


def union_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x, y, w, h] around every defect pixel, or None for a clean layer."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def mask_png(mask: np.ndarray) -> MaskImage:
    """The mask as an 8-bit PNG (0 = clean, 255 = defect), base64-encoded for JSON."""
    h, w = mask.shape
    data = base64.b64encode(encode_png(mask.astype(np.uint8) * 255)).decode("ascii")
    return MaskImage("png", "base64", w, h, data)


def detect(
    probabilities: np.ndarray, threshold: float, return_mask: bool = True, max_components: int | None = None
) -> Detection:
    """What one layer's probabilities say at a threshold: decision, confidence, area, union box, components (the
    `max_components` largest; `components_total` counts them all) and, optionally, the mask."""
    mask = defect_mask(probabilities, threshold)
    found, total = components(mask, probabilities, max_components)
    area = int(np.count_nonzero(mask))
    return Detection(
        defect=area > 0,
        max_confidence=round(float(probabilities.max()), 4),
        threshold=threshold,
        defect_area_px=area,
        defect_area_pct=round(100.0 * area / mask.size, 4),
        bbox=union_bbox(mask),
        components=tuple(found),
        components_total=total,
        mask=mask_png(mask) if return_mask else None,
    )
