"""Three light images -> the model's input tensor. Shared by training, evaluation and serving (no training-only
dependencies): scale by bit depth, normalise per channel with the ModelConfig's statistics, pad to the size the
U-Net needs."""

from __future__ import annotations

import numpy as np

from training.inference.config import ModelConfig


def to_unit(stack: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 -> float32 in 0..1 (full scale of the bit depth maps to 1)."""
    if stack.dtype == np.uint8:
        return stack.astype(np.float32) / 255.0
    if stack.dtype == np.uint16:
        return stack.astype(np.float32) / 65535.0
    raise ValueError(f"expected 8- or 16-bit pixels, got {stack.dtype}")


def normalize(unit: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(H, W, C) float in 0..1 -> (C, H, W) float32 standardised with the config's mean and std."""
    if unit.ndim != 3 or unit.shape[2] != config.in_channels:
        raise ValueError(f"expected an (H, W, {config.in_channels}) stack, got shape {unit.shape}")
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((unit - mean) / std).transpose(2, 0, 1))


def pad_to_multiple(chw: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad (C, H, W) at the bottom and right by reflection to sides divisible by `multiple`; returns the padded
    array and the original (H, W) to crop the output back."""
    _, h, w = chw.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return chw, (h, w)
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(chw, ((0, 0), (0, ph), (0, pw)), mode=mode), (h, w)


def channel_statistics(stacks: list[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of stacks scaled to 0..1 (for a new ModelConfig)."""
    total = np.zeros(3, np.float64)
    squares = np.zeros(3, np.float64)
    count = 0
    for stack in stacks:
        unit = to_unit(stack).reshape(-1, stack.shape[2]).astype(np.float64)
        total += unit.sum(axis=0)
        squares += (unit**2).sum(axis=0)
        count += unit.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
