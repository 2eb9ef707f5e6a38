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

import functools
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from training.inference.config import ModelConfig

SHADOW_FLOOR = 0.02  # added to every pixel before the log, as a share of the layer's median level
CLIP = 8.0  # robust standard deviations: glints and deep shadows saturate here
ALBEDO_SCALE = 4  # the albedo channel's background is this many times larger: large dark regions stay visible
STATISTICS_STRIDE = 4  # medians and spreads are taken on every 4th pixel of every 4th row
BAND_ROWS = 256  # the fewest rows a thread is given: smaller layers are worked on in one piece


def to_unit(stack: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or uint16 -> (3, H, W) float32 in 0..1, light by light (full scale of the bit depth maps to
    1). Every later step works on whole planes: an operation over a short last axis, or writes into one, is many
    times slower than over a plane."""
    if stack.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected 8- or 16-bit pixels, got {stack.dtype}")
    h, w, lights = stack.shape
    planes = np.empty((lights, h, w), np.float32)

    def convert(rows: slice) -> None:
        planes[:, rows] = stack[rows].transpose(2, 0, 1)
        planes[:, rows] /= np.iinfo(stack.dtype).max

    in_bands(convert, h)
    return planes


def in_bands(work: Callable[[slice], object], height: int) -> None:
    """Run `work(rows)` on bands of rows that together cover `height`, at once, one band per thread torch is given
    (the handler's `threads`): numpy and OpenCV let go of the GIL while they work on arrays. Values are the same
    as in one piece: every step run in bands treats each pixel on its own."""
    count = min(torch.get_num_threads(), height // BAND_ROWS)
    if count <= 1:
        work(slice(0, height))
        return
    edges = [round(k * height / count) for k in range(count + 1)]
    for done in [_pool(count, os.getpid()).submit(work, slice(a, b)) for a, b in itertools.pairwise(edges)]:
        done.result()


@functools.cache
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """The threads preprocessing works on, made once per count and process (a forked child has none of its
    parent's threads, so it makes its own)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="preprocess")


def model_channels(stack: np.ndarray, config: ModelConfig, background_sigma_px: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8/uint16 stack of the three lights -> (C, H, W) float32 model input for the config's
    representation. Statistics are taken over the whole layer, so tiles of a large layer see one input.
    `background_sigma_px` replaces the config's background scale (a subsampled layer needs it shrunk)."""
    lights = len(config.azimuths_deg)
    if stack.ndim != 3 or stack.shape[2] != lights:
        raise ValueError(f"expected an (H, W, {lights}) stack, one image per light, got shape {stack.shape}")
    planes = to_unit(stack)
    if config.representation == "intensity":
        return normalize(planes, config)
    sigma = config.background_sigma_px if background_sigma_px is None else background_sigma_px
    return shading_channels(planes, sigma, albedo=config.representation == "shading+albedo")


def normalize(planes: np.ndarray, config: ModelConfig) -> np.ndarray:
    """(C, H, W) float in 0..1 -> (C, H, W) float32 standardised with the config's mean and std, in place."""
    if planes.ndim != 3 or planes.shape[0] != len(config.mean):
        raise ValueError(f"expected a (C, H, W) stack with C = {len(config.mean)}, got shape {planes.shape}")
    for plane, mean, std in zip(planes, config.mean, config.std, strict=True):
        plane -= np.float32(mean)
        plane /= np.float32(std)
    return planes


def shading_channels(planes: np.ndarray, background_sigma_px: float, albedo: bool = False) -> np.ndarray:
    """(3, H, W) float in 0..1 -> (3, H, W) shading channels, or (4, H, W) with the albedo channel."""
    return shading_from_ratios(*log_ratios(planes, background_sigma_px), background_sigma_px, albedo)


def log_ratios(planes: np.ndarray, background_sigma_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) float in 0..1 -> the log ratio of each light to the geometric mean of the three, less its
    background, (3, H, W); and the log of that mean, (H, W). The shading channels before their spread is divided
    out (the familiarity check takes that spread as the lights' contrast). `planes` is left as it was."""
    lights, h, w = planes.shape
    floor = np.float32(max(SHADOW_FLOOR * float(np.median(planes[:, ::STATISTICS_STRIDE, ::STATISTICS_STRIDE])), 1e-4))
    ratios = np.empty_like(planes)  # the logs, which become the ratios in place
    mean_log = np.empty((h, w), np.float32)

    def logs(rows: slice) -> None:
        band = ratios[:, rows]
        np.add(planes[:, rows], floor, out=band)
        np.log(band, out=band)
        mean = mean_log[rows]
        np.copyto(mean, band[0])
        for log in band[1:]:
            mean += log
        mean /= lights
        band -= mean

    in_bands(logs, h)
    backgrounds = [background(ratio, background_sigma_px) for ratio in ratios]  # OpenCV runs each on its threads

    def less_background(rows: slice) -> None:
        for ratio, large in zip(ratios, backgrounds, strict=True):
            ratio[rows] -= large[rows]

    in_bands(less_background, h)
    return ratios, mean_log


def shading_from_ratios(ratios: np.ndarray, mean_log: np.ndarray, background_sigma_px: float,
                        albedo: bool = False) -> np.ndarray:  # fmt: skip
    """`log_ratios`' output -> the shading channels (and the albedo channel), each divided by its robust spread."""
    lights, h, w = ratios.shape
    out = np.empty((lights + int(albedo), h, w), dtype=np.float32)  # filled in place: no intermediate copies
    spreads = [np.float32(robust_spread(ratios))]
    if albedo:
        np.subtract(mean_log, background(mean_log, ALBEDO_SCALE * background_sigma_px), out=out[lights])
        spreads.append(np.float32(robust_spread(out[lights])))

    def divide(rows: slice) -> None:
        np.divide(ratios[:, rows], spreads[0], out=out[:lights, rows])
        if albedo:
            out[lights, rows] /= spreads[1]
        np.clip(out[:, rows], -CLIP, CLIP, out=out[:, rows])

    in_bands(divide, h)
    return out


def background(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """The large-scale part of an (H, W) image: a Gaussian blur of `sigma_px`, computed on a reduced copy (the
    result is smooth at that scale, so nothing is lost) and brought back to full size."""
    h, w = image.shape
    factor = max(1, int(sigma_px // 4))
    small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def robust_spread(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of a sample strided over the last two axes (rows and columns) (the
    standard deviation, for normal values)."""
    sample = values[..., ::STATISTICS_STRIDE, ::STATISTICS_STRIDE].ravel()
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
        planes = to_unit(stack).reshape(stack.shape[2], -1).astype(np.float64)
        total += planes.sum(axis=1)
        squares += (planes**2).sum(axis=1)
        count += planes.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
