"""Defect probabilities -> the Detection part of the answer: the decision mask, its connected components, areas
and boxes, and the mask as PNG. The output contract shared by evaluation and the serving handler."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from training.inference.answer import (
    BINARY_MASK,
    CLASS_MAP,
    MASK_FORMATS,
    UNKNOWN_SCALE,
    ClassSummary,
    Component,
    Detection,
    MaskImage,
    Scale,
)
from training.inference.images import encode_png


@dataclass(frozen=True)
class Prediction:
    """What the model says of a layer: the probability of any defect per pixel and, from a class model, each defect
    class's probability (they sum to the defect probability). `tiling` makes it."""

    defect: np.ndarray  # (H, W) float32
    classes: np.ndarray | None = None  # (K, H, W) float32, class k = class_names[k]; None: binary model
    class_names: tuple[str, ...] = ()  # the model's (ModelConfig.class_names)

    def __post_init__(self) -> None:
        if (0 if self.classes is None else self.classes.shape[0]) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names for the probabilities of "
                             f"{0 if self.classes is None else self.classes.shape[0]} classes")  # fmt: skip


SEED_PROBABILITY = 0.5  # a defect must reach even odds somewhere; the threshold, when lower, draws its extent


@dataclass(frozen=True)
class Regions:
    """The 8-connected regions of a defect mask, labelled once: `labels` (H, W) int32, 0 outside the mask, 1..n
    the regions; `stats` (n + 1, 5) as cv2.connectedComponentsWithStats gives them (row 0 the background's)."""

    labels: np.ndarray
    stats: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Regions:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        return cls(labels, stats)

    @property
    def count(self) -> int:
        """Regions, not counting the background."""
        return len(self.stats) - 1

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    def keep(self, kept: np.ndarray) -> Regions:
        """Only the regions whose `kept` (n + 1,) entry is true (the background's is ignored), numbered 1.. in
        their order."""
        kept = np.asarray(kept, dtype=bool).copy()
        kept[0] = False
        if kept[1:].all():
            return self
        number = np.zeros(len(kept), dtype=self.labels.dtype)
        number[kept] = np.arange(1, int(kept.sum()) + 1, dtype=self.labels.dtype)
        return Regions(number[self.labels], np.concatenate([self.stats[:1], self.stats[kept]]))


def defect_regions(probabilities: np.ndarray, threshold: float) -> Regions:
    """The decision's regions: the 8-connected regions of pixels at or above the threshold (compared in float32,
    as the PR curve is) that hold at least one pixel at SEED_PROBABILITY or above, or at the threshold when it is
    higher.

    A threshold chosen for the best F1 is often well below even odds: it draws a defect's full extent, but on
    layers unlike the training layers it also marks wide, faint regions. The seed keeps only regions the model is
    confident of somewhere (hysteresis, as in Canny's edges). Measured on the second renderer's layers: fewer
    clean layers flagged and higher F1 (`docs/generalization.md`)."""
    regions = Regions.of(probabilities >= np.float32(threshold))
    seed = np.float32(max(threshold, SEED_PROBABILITY))
    if seed <= np.float32(threshold) or regions.count == 0:
        return regions
    kept = np.zeros(regions.count + 1, dtype=bool)
    kept[regions.labels[probabilities >= seed]] = True
    return regions.keep(kept)


def defect_mask(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool: the pixels of `defect_regions`."""
    return defect_regions(probabilities, threshold).mask


def check_threshold(value: Any) -> float:
    """A request's threshold override as a float strictly between 0 and 1, or a ValueError that says what came."""
    try:
        threshold = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"threshold must be a number between 0 and 1, got {value!r}") from err
    if not 0.0 < threshold < 1.0:  # NaN fails this too
        raise ValueError(f"threshold must be strictly between 0 and 1, got {value!r}")
    return threshold


def class_masses(regions: Regions, classes: np.ndarray) -> np.ndarray:
    """(n + 1, K): each region's summed probability of each defect class over its pixels (row 0: outside)."""
    inside = regions.mask
    label = regions.labels[inside]
    return np.stack([np.bincount(label, weights=c[inside], minlength=regions.count + 1) for c in classes], axis=1)


def region_classes(masses: np.ndarray) -> np.ndarray:
    """(n + 1,) each region's class index, the defect class holding most of its probability (-1 for row 0)."""
    best = masses.argmax(axis=1)
    best[0] = -1
    return best


def components(
    regions: Regions,
    probabilities: np.ndarray,
    limit: int | None = None,
    masses: np.ndarray | None = None,
    class_names: tuple[str, ...] = (),
    mm_per_px: float | None = None,
) -> tuple[list[Component], int]:
    """The regions as components, largest first (the `limit` largest), each with its box, area, highest
    probability, class (the defect class with most of its probability, from a class model's `class_masses`) and
    millimetres (with `mm_per_px`); and how many there are in all. Vectorised: a noisy mask with 10^5 components
    stays fast."""
    total = regions.count
    if total == 0:
        return [], 0
    stats = regions.stats[1:]
    area = stats[:, cv2.CC_STAT_AREA]
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    chosen = np.lexsort((left, top, -area))[:limit]  # largest first; ties top to bottom, left to right
    inside = regions.mask
    label, value = regions.labels[inside], probabilities[inside]
    order = np.lexsort((value, label))  # by label, then probability: each label's last entry is its peak
    ends = np.searchsorted(label[order], np.arange(1, total + 1), side="right") - 1
    peaks = value[order][ends]  # (total,) peak probability of regions 1..total
    if masses is not None:
        best = masses[1:].argmax(axis=1)
        shares = masses[1:][np.arange(total), best] / np.maximum(masses[1:].sum(axis=1), 1e-12)
    found = []
    for i in chosen:
        box = (int(left[i]), int(top[i]), int(stats[i, cv2.CC_STAT_WIDTH]), int(stats[i, cv2.CC_STAT_HEIGHT]))
        found.append(
            Component(
                box,
                int(area[i]),
                round(float(peaks[i]), 4),
                class_names[best[i]] if masses is not None else None,
                round(float(shares[i]), 4) if masses is not None else None,
                area_mm2(int(area[i]), mm_per_px),
                box_mm(box, mm_per_px),
            )
        )
    return found, total


def class_of_regions(mask: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8-connected regions' labels (H, W) and each label's class index (the defect class with most of its
    probability; -1 for label 0, outside the mask): `best[labels]` is the (H, W) map of region classes."""
    regions = Regions.of(mask)
    return regions.labels, region_classes(class_masses(regions, classes))


def class_map(mask: np.ndarray, classes: np.ndarray, left_out: tuple[int, ...] = ()) -> np.ndarray:
    """(H, W) uint8: 0 outside the mask, else 1 + the pixel's most probable defect class among those not `left_out`
    (class indices a request ignores: a counted region never shows an ignored class's id)."""
    if left_out:
        classes = classes.copy()
        classes[list(left_out)] = -1.0
    return np.where(mask, classes.argmax(axis=0) + 1, 0).astype(np.uint8)


def area_mm2(area_px: int, mm_per_px: float | None) -> float | None:
    return None if mm_per_px is None else round(area_px * mm_per_px * mm_per_px, 6)


def box_mm(box: tuple[int, int, int, int] | None, mm_per_px: float | None) -> tuple[float, ...] | None:
    return None if box is None or mm_per_px is None else tuple(round(v * mm_per_px, 4) for v in box)


def union_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[x, y, w, h] around every defect pixel, or None for a clean layer."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def mask_png(mask: np.ndarray, classes: np.ndarray | None = None, left_out: tuple[int, ...] = ()) -> MaskImage:
    """The mask as an 8-bit PNG, base64-encoded for JSON: 0 = clean, 255 = defect; or, given a class model's
    (K, H, W) `classes`, the class map (0 = clean, k = class k of the model, 1-based; never a `left_out` class)."""
    h, w = mask.shape
    pixels = mask.astype(np.uint8) * 255 if classes is None else class_map(mask, classes, left_out)
    data = base64.b64encode(encode_png(pixels)).decode("ascii")
    return MaskImage("png", "base64", w, h, data, BINARY_MASK if classes is None else CLASS_MAP)


def detect(
    prediction: Prediction | np.ndarray,
    threshold: float,
    return_mask: bool = True,
    max_components: int | None = None,
    scale: Scale = UNKNOWN_SCALE,
    ignore_classes: tuple[str, ...] = (),
    mask_format: str = BINARY_MASK,
) -> Detection:
    """What one layer's prediction (or (H, W) defect probabilities) says at a threshold: decision, confidence,
    area, union box, components (the `max_components` largest; `components_total` counts them all), per-class
    summary, millimetres where the scale is known and, optionally, the mask. Regions of `ignore_classes` are
    counted in the class summary and left out of everything else, the decision included."""
    if isinstance(prediction, np.ndarray):
        prediction = Prediction(prediction)
    probabilities, classes, class_names = prediction.defect, prediction.classes, prediction.class_names
    if ignore_classes and classes is None:
        raise ValueError("ignore_classes needs a class model; this model answers without classes")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}, got {mask_format!r}")
    if mask_format == CLASS_MAP and classes is None:
        raise ValueError("mask_format classes needs a class model; this model answers without classes")
    regions = defect_regions(probabilities, threshold)  # labelled once: the summary and components share it
    summary: tuple[ClassSummary, ...] = ()
    masses = None
    mm = scale.mm_per_px
    left_out = tuple(class_names.index(n) for n in ignore_classes)
    if classes is not None:
        masses = class_masses(regions, classes)
        best = region_classes(masses)[1:]
        k = len(class_names)
        counts = np.bincount(best, minlength=k)  # each region counted once, in its class
        pixels = np.bincount(best, weights=regions.stats[1:, cv2.CC_STAT_AREA], minlength=k).astype(np.int64)
        summary = tuple(
            ClassSummary(name, int(counts[c]), int(pixels[c]), area_mm2(int(pixels[c]), mm), name not in ignore_classes)
            for c, name in enumerate(class_names)
        )
        kept = np.concatenate([[True], ~np.isin(best, left_out)])  # row 0, outside, stays a row of the masses
        regions, masses = regions.keep(kept), masses[kept]
    mask = regions.mask
    found, total = components(regions, probabilities, max_components, masses, class_names, mm)
    area = int(np.count_nonzero(mask))
    bbox = union_bbox(mask)
    return Detection(
        defect=area > 0,
        max_confidence=round(float(probabilities.max()), 4),
        threshold=threshold,
        defect_area_px=area,
        defect_area_pct=round(100.0 * area / mask.size, 4),
        bbox=bbox,
        components=tuple(found),
        components_total=total,
        mask=(mask_png(mask, classes if mask_format == CLASS_MAP else None, left_out) if return_mask else None),
        classes_available=classes is not None,
        class_summary=summary,
        ignored_classes=tuple(ignore_classes),
        scale=scale,
        defect_area_mm2=area_mm2(area, mm),
        bbox_mm=box_mm(bbox, mm),
    )
