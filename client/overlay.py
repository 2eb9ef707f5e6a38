"""An overlay PNG for a person: the three light images stacked as colour (channel k = light k) with the defect
mask's outline and each region's box in its class's colour (`training/inference/classes.py`) drawn on top."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from client.ab import decode_mask
from training.inference.classes import CLASS_COLOURS, UNCLASSIFIED_COLOUR
from training.inference.images import encode_png, read_gray, write_atomic

OUTLINE = (255, 0, 255)  # magenta: absent from the gray-ish stack


def rgb(colour: str) -> tuple[int, int, int]:
    """'#RRGGBB' -> (R, G, B)."""
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def overlay(stack_rgb: np.ndarray, mask: np.ndarray, components: Sequence[dict[str, Any]]) -> np.ndarray:
    """(H, W, 3) uint8 RGB image with the mask outline and each component's box, in its class's colour (a region
    without a class in UNCLASSIFIED_COLOUR), drawn just outside the box."""
    image = np.ascontiguousarray(stack_rgb.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, OUTLINE, 1)
    for component in components:
        x, y, w, h = component["bbox"]
        colour = CLASS_COLOURS.get(component.get("class_name") or "", UNCLASSIFIED_COLOUR)
        cv2.rectangle(image, (x - 1, y - 1), (x + w, y + h), rgb(colour), 1)
    return image


def to_8bit(stack: np.ndarray) -> np.ndarray:
    """uint8 as it is; 16-bit files (10- to 16-bit cameras) stretched by one factor so the lights keep their balance."""
    if stack.dtype == np.uint8:
        return stack
    top = max(int(stack.max()), 1)
    return (stack.astype(np.float32) * (255.0 / top)).astype(np.uint8)


def write_overlay(paths: Sequence[Path], answer: dict[str, Any], out: Path) -> None:
    stack = to_8bit(np.stack([read_gray(p).pixels for p in paths], axis=-1))
    write_atomic(out, encode_png(overlay(stack, decode_mask(answer), answer.get("components", []))))
