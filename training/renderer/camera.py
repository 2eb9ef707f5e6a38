"""From scene radiance to the pixel values a layer camera writes: illumination fall-off, misregistration,
pixel integration, vignetting, per-light gain drift, shot and read noise, quantisation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.renderer.lighting import Light, shift_image


@dataclass(frozen=True)
class CameraConfig:
    bit_depth: int = 8
    full_well_e: float = 20000.0
    read_noise_e: float = 6.0
    target_level: float = 0.4  # flat powder under a light lands here, as a fraction of full scale
    gain_drift: float = 0.05  # standard deviation of each light's relative gain, per layer
    vignetting: tuple[float, float] = (0.08, 0.25)  # relative fall-off at the corners
    illumination_gradient: tuple[float, float] = (0.03, 0.12)  # brighter on the side nearer the light
    misregistration_px: float = 0.4  # images 1 and 2 shift by up to this much relative to image 0

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, got {self.bit_depth}")


@dataclass(frozen=True)
class Exposure:
    """The random state of one light's exposure, recorded in the layer's metadata."""

    gain: float
    gradient: float
    shift_px: tuple[float, float]


def draw_exposures(rng: np.random.Generator, config: CameraConfig, n: int) -> list[Exposure]:
    exposures = []
    for k in range(n):
        shift = (
            (0.0, 0.0) if k == 0 else tuple(float(v) for v in rng.uniform(-1, 1, size=2) * config.misregistration_px)
        )
        exposures.append(
            Exposure(
                gain=float(1.0 + config.gain_drift * rng.standard_normal()),
                gradient=float(rng.uniform(*config.illumination_gradient)),
                shift_px=shift,
            )
        )
    return exposures


def bin_pixels(image: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor blocks: what a sensor pixel integrates."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3))


def capture(
    rng: np.random.Generator,
    radiance: np.ndarray,
    light: Light,
    exposure: Exposure,
    vignetting: float,
    flat_radiance: float,
    scale: int,
    config: CameraConfig,
) -> np.ndarray:
    """Turn render-resolution radiance into one camera image (uint8 or uint16) at output resolution."""
    hr, wr = radiance.shape
    yy, xx = np.mgrid[0:hr, 0:wr].astype(np.float32)
    u = (xx - wr / 2) / (wr / 2)  # -1..1 across the field
    v = (yy - hr / 2) / (hr / 2)
    d = light.direction()
    toward = (u * d[0] + v * d[1]) / max(math.hypot(d[0], d[1]), 1e-9)  # +1 at the edge nearest the light
    lit = radiance * (1.0 + exposure.gradient * toward)
    lit = shift_image(lit, exposure.shift_px[0] * scale, exposure.shift_px[1] * scale)
    pixels = bin_pixels(lit, scale)  # (H, W)
    h, w = pixels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2.0  # 1 at the corners
    pixels = pixels * (1.0 - vignetting * r2) * exposure.gain

    electrons_per_unit = config.target_level * config.full_well_e / flat_radiance
    electrons = rng.poisson(np.clip(pixels * electrons_per_unit, 0.0, None)).astype(np.float32)
    electrons += rng.normal(0.0, config.read_noise_e, size=electrons.shape).astype(np.float32)
    full_scale = (1 << config.bit_depth) - 1
    counts = np.clip(np.round(electrons / config.full_well_e * full_scale), 0, full_scale)
    return counts.astype(np.uint8 if config.bit_depth == 8 else np.uint16)
