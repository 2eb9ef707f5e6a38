"""Heuristic defect labels from the three light images, as the prototype made them: flatten each image's
background, threshold bright and dark anomalies, clean with morphology, then vote across the lights.

Real data has no ground truth; these labels are what users can train on. `docs/label_quality.md` measures them
against the generator's exact truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

VOTES: dict[str, int] = {"and": 3, "majority": 2, "or": 1}  # rule -> how many of the three lights must agree


@dataclass(frozen=True)
class LabelConfig:
    smooth_sigma_px: float = 2.0  # suppresses powder-grain texture and noise before thresholding
    background_sigma_px: float = 12.0  # the blur that estimates (and removes) shading and vignetting
    threshold: float = 2.5  # in robust standard deviations of the flattened image
    open_px: int = 3  # opening removes specks smaller than this
    close_px: int = 9  # closing joins fragments of one anomaly
    min_area_px: int = 12  # smaller components are dropped

    def __post_init__(self) -> None:
        if self.background_sigma_px <= 0 or self.threshold <= 0:
            raise ValueError(f"background sigma and threshold must be positive, got {self}")


def check_vote(rule: str) -> int:
    if rule not in VOTES:
        raise ValueError(f"unknown vote rule {rule!r}; choose from: {', '.join(VOTES)}")
    return VOTES[rule]


def remove_trend(pixels: np.ndarray) -> np.ndarray:
    """Subtract the least-squares quadratic surface: vignetting and light fall-off, which a blur handles badly at
    the image edges."""
    h, w = pixels.shape
    step = max(1, min(h, w) // 64)  # fit on a grid of about 64 x 64 samples
    yy, xx = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    y, x = yy / h - 0.5, xx / w - 0.5
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(basis, pixels[::step, ::step].reshape(-1), rcond=None)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = yy / h - 0.5, xx / w - 0.5
    return pixels - (coef[0] + coef[1] * x + coef[2] * y + coef[3] * x * x + coef[4] * x * y + coef[5] * y * y)


def _standardize(residual: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre on the median; return the residual and its robust standard deviation (1.4826 x MAD)."""
    centred = residual - float(np.median(residual))
    return centred, 1.4826 * float(np.median(np.abs(centred)))


def anomaly_mask(image: np.ndarray, config: LabelConfig) -> np.ndarray:
    """Bright and dark anomalies of one grayscale image as a boolean (H, W) mask."""
    pixels = remove_trend(image.astype(np.float32))
    smoothed = cv2.GaussianBlur(pixels, (0, 0), config.smooth_sigma_px) if config.smooth_sigma_px > 0 else pixels
    background = cv2.GaussianBlur(pixels, (0, 0), config.background_sigma_px)
    residual, scale = _standardize(smoothed - background)  # band-pass: larger than a grain, smaller than shading
    if scale <= 0.0:
        return np.zeros(image.shape, dtype=bool)
    mask = (np.abs(residual) > config.threshold * scale).astype(np.uint8)
    if config.open_px > 1:
        mask = cv2.morphologyEx(
            mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.open_px,) * 2)
        )
    if config.close_px > 1:
        mask = cv2.morphologyEx(
            mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.close_px,) * 2)
        )
    if config.min_area_px > 1:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = np.zeros(n, dtype=bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= config.min_area_px
        mask = keep[labels].astype(np.uint8)
    return mask.astype(bool)


def light_votes(stack: np.ndarray, config: LabelConfig) -> np.ndarray:
    """How many of the lights flag each pixel: (H, W, 3) stack -> (H, W) uint8 in 0..3."""
    if stack.ndim != 3 or stack.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) stack of the three light images, got shape {stack.shape}")
    return sum(anomaly_mask(stack[:, :, k], config).astype(np.uint8) for k in range(3))


def vote(votes: np.ndarray, rule: str) -> np.ndarray:
    """Combine per-light flags by a rule: 'and' (3 of 3), 'majority' (2 of 3), 'or' (1 of 3)."""
    return votes >= check_vote(rule)
