"""Shared plotting helpers: headless matplotlib, atomic PNG writes, display of stacks and error overlays."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from training.inference.images import write_atomic

TRUE_POSITIVE = (0.1, 0.9, 0.1)  # green
FALSE_POSITIVE = (0.95, 0.1, 0.1)  # red
MISSED = (0.2, 0.4, 1.0)  # blue


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported lazily: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write a figure as PNG atomically, without a timestamp (same figure, same bytes), and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    pyplot().close(fig)
    write_atomic(path, buffer.getvalue())


def display_stack(stack: np.ndarray) -> np.ndarray:
    """Stacked image as RGB floats (channel k = light k), each channel stretched to its 1-99% range."""
    out = np.empty(stack.shape, dtype=np.float32)
    for k in range(stack.shape[2]):
        lo, hi = np.percentile(stack[:, :, k], [1, 99])
        out[:, :, k] = np.clip((stack[:, :, k] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def error_overlay(stack: np.ndarray, predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Dimmed gray image with true positives green, false positives red and misses blue."""
    gray = display_stack(stack).mean(axis=2)
    overlay = np.stack([gray] * 3, axis=-1) * 0.6
    overlay[predicted & reference] = TRUE_POSITIVE
    overlay[predicted & ~reference] = FALSE_POSITIVE
    overlay[~predicted & reference] = MISSED
    return overlay
