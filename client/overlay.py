"""An overlay PNG for a person: the three light images stacked as colour (channel k = light k) with the defect
mask's outline and the union box drawn on top."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from client.ab import decode_mask
from training.inference.images import encode_png, read_gray, write_atomic

OUTLINE = (255, 0, 255)  # magenta: absent from the gray-ish stack
BOX = (255, 255, 0)


def overlay(stack_rgb: np.ndarray, mask: np.ndarray, bbox: Sequence[int] | None) -> np.ndarray:
    """(H, W, 3) uint8 image with the mask outline (and the union box) drawn."""
    image = np.ascontiguousarray(stack_rgb.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, OUTLINE, 1)
    if bbox is not None:
        x, y, w, h = bbox
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), BOX, 1)
    return image


def to_8bit(stack: np.ndarray) -> np.ndarray:
    """uint8 as it is; 16-bit files (10- to 16-bit cameras) stretched by one factor so the lights keep their balance."""
    if stack.dtype == np.uint8:
        return stack
    top = max(int(stack.max()), 1)
    return (stack.astype(np.float32) * (255.0 / top)).astype(np.uint8)


def write_overlay(paths: Sequence[Path], answer: dict[str, Any], out: Path) -> None:
    stack = to_8bit(np.stack([read_gray(p).pixels for p in paths], axis=-1))
    write_atomic(out, encode_png(overlay(stack, decode_mask(answer), answer.get("bbox"))))
