"""Three light images -> the model's input tensor. Shared by training, evaluation, serving and the benches (no
training-only dependencies): one function, `model_channels`, derives the input from the ModelConfig's
representation; `pad_to_multiple` pads to the sides the U-Net needs.

Representations (`ModelConfig.representation`):
- "shading": the log ratio of each light's image to the geometric mean of the three, less its large-scale
  background, divided by the layer's robust spread. What a pixel's reflectance, the exposure, the camera gain,
  vignetting and a power-law response do to the three images alike cancels in the ratio; a light's own gain and
  fall-off cancel with the background; the response's exponent and the light elevation's overall contrast cancel
  with the spread. What remains is shading: how the surface's slope and shadows differ between the lights,
  which is what defects change.
- "shading+albedo": the same three channels and a fourth, the log of the mean image less its background (on a
  scale ALBEDO_SCALE times larger, so that a large region of missing powder keeps its contrast), divided by its
  robust spread: reflectance contrast (dark spatter, exposed previous layer), free of exposure and most vignetting.
- "intensity": pixels scaled to 0..1 and standardised with the training set's channel mean and deviation: the
  prototype's input, kept to compare against. It transfers poorly: a brighter camera shifts every pixel.
"""

from __future__ import annotations

import cv2
import numpy as np

from training.inference.config import ModelConfig

SHADOW_FLOOR = 0.02  # added to every pixel before the log, as a share of the layer's median level
CLIP = 8.0  # robust standard deviations: glints and deep shadows saturate here
ALBEDO_SCALE = 4  # the albedo channel's background is this many times larger: large dark regions stay visible
STATISTICS_STRIDE = 4  # medians and spreads are taken on every 4th pixel of every 4th row


def to_unit(stack: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 -> float32 in 0..1 (full scale of the bit depth maps to 1)."""
    if stack.dtype == np.uint8:
        return stack.astype(np.float32) / 255.0
    if stack.dtype == np.uint16:
        return stack.astype(np.float32) / 65535.0
    raise ValueError(f"expected 8- or 16-bit pixels, got {stack.dtype}")


def model_channels(stack: np.ndarray, config: ModelConfig, background_sigma_px: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8/uint16 stack of the three lights -> (C, H, W) float32 model input for the config's
    representation. Statistics are taken over the whole layer, so tiles of a large layer see one input.
    `background_sigma_px` replaces the config's background scale (a subsampled layer needs it shrunk)."""
    lights = len(config.azimuths_deg)
    if stack.ndim != 3 or stack.shape[2] != lights:
        raise ValueError(f"expected an (H, W, {lights}) stack, one image per light, got shape {stack.shape}")
    unit = to_unit(stack)
    if config.representation == "intensity":
        return normalize(unit, config)
    sigma = config.background_sigma_px if background_sigma_px is None else background_sigma_px
    channels = shading_channels(unit, sigma, albedo=config.representation == "shading+albedo")
    return np.ascontiguousarray(channels.transpose(2, 0, 1))


def normalize(unit: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(H, W, C) float in 0..1 -> (C, H, W) float32 standardised with the config's mean and std."""
    if unit.ndim != 3 or unit.shape[2] != len(config.mean):
        raise ValueError(f"expected an (H, W, {len(config.mean)}) stack, got shape {unit.shape}")
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((unit - mean) / std).transpose(2, 0, 1))


def shading_channels(unit: np.ndarray, background_sigma_px: float, albedo: bool = False) -> np.ndarray:
    """(H, W, 3) float in 0..1 -> (H, W, 3) shading channels, or (H, W, 4) with the albedo channel."""
    return shading_from_ratios(*log_ratios(unit, background_sigma_px), background_sigma_px, albedo)


def log_ratios(unit: np.ndarray, background_sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float in 0..1 -> the log ratio of each light to the geometric mean of the three, less its
    background, (H, W, 3); and the log of that mean, (H, W). The shading channels before their spread is divided
    out (the familiarity check takes that spread as the lights' contrast)."""
    level = float(np.median(unit[::STATISTICS_STRIDE, ::STATISTICS_STRIDE]))
    # One new array, worked on in place (the logs become the ratios): a layer-sized temporary costs its page faults.
    logs = unit + max(SHADOW_FLOOR * level, 1e-4)
    np.log(logs, out=logs)
    # The mean over the lights as the same float32 sum numpy's mean takes, added light by light: a reduction over a
    # short last axis is many times slower.
    mean_log = logs[..., 0].copy()
    for k in range(1, logs.shape[2]):
        mean_log += logs[..., k]
    mean_log /= logs.shape[2]
    ratios = logs
    ratios -= mean_log[..., None]
    ratios -= background(ratios, background_sigma_px)
    return ratios, mean_log


def shading_from_ratios(ratios: np.ndarray, mean_log: np.ndarray, background_sigma_px: float,
                        albedo: bool = False) -> np.ndarray:  # fmt: skip
    """`log_ratios`' output -> the shading channels (and the albedo channel), each divided by its robust spread."""
    h, w, lights = ratios.shape
    out = np.empty((h, w, lights + int(albedo)), dtype=np.float32)  # filled in place: no intermediate copies
    np.divide(ratios, robust_spread(ratios), out=out[..., :lights])
    if albedo:
        contrast = mean_log - background(mean_log, ALBEDO_SCALE * background_sigma_px)
        np.divide(contrast, robust_spread(contrast), out=out[..., lights])
    return np.clip(out, -CLIP, CLIP, out=out)


def background(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """The large-scale part of an (H, W) or (H, W, C) image: a Gaussian blur of `sigma_px`, computed on a reduced
    copy (the result is smooth at that scale, so nothing is lost) and brought back to full size."""
    h, w = image.shape[:2]
    factor = max(1, int(sigma_px // 4))
    small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(image.shape)


def robust_spread(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of a strided sample (the standard deviation, for normal values)."""
    sample = values[::STATISTICS_STRIDE, ::STATISTICS_STRIDE].ravel()
    deviation = np.median(np.abs(sample - np.median(sample)))
    return max(1.4826 * float(deviation), 1e-6)


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
    """Per-channel mean and standard deviation of stacks scaled to 0..1 (for an "intensity" ModelConfig)."""
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
