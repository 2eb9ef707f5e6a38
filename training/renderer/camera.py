"""From scene radiance to the pixel values a layer camera writes: illumination fall-off, misregistration,
optical blur, pixel integration, vignetting, per-light gain drift, shot and read noise, response curve,
quantisation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.renderer.lighting import Light, shift_image


@dataclass(frozen=True)
class CameraConfig:
    bit_depth: int = 8
    full_well_e: float = 20000.0
    read_noise_e: float = 6.0
    target_level: float = 0.4  # flat powder under a light lands here (after the response curve), of full scale
    gain_drift: float = 0.05  # standard deviation of each light's relative gain, per layer
    vignetting: tuple[float, float] = (0.08, 0.25)  # relative fall-off at the corners
    illumination_gradient: tuple[float, float] = (0.03, 0.12)  # brighter on the side nearer the light
    misregistration_px: float = 0.4  # images 1 and 2 shift by up to this much relative to image 0
    response_gamma: float = 1.0  # the normalised signal s becomes s**gamma before quantisation
    blur_px: float = 0.0  # Gaussian optical blur, sigma in output pixels

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit depth must be 8 or 16, got {self.bit_depth}")
        if not 0.0 < self.target_level <= 1.0:
            raise ValueError(f"camera target level must be within (0, 1] of full scale, got {self.target_level}")
        if self.response_gamma <= 0.0:
            raise ValueError(f"camera response gamma must be positive, got {self.response_gamma}")
        if self.blur_px < 0.0:
            raise ValueError(f"camera blur (sigma in output pixels) must be at least 0, got {self.blur_px}")


HEADROOM = 0.9  # auto-exposure: the brightest image's AUTO_PERCENTILE lands at most here, of full scale
AUTO_PERCENTILE = 99.0  # the brightest 1% (glints, sheen) may saturate


def auto_exposure(radiances: list[np.ndarray], flat_radiance: float, config: CameraConfig) -> float:
    """The exposure reference for `capture`: `flat_radiance` (flat powder lands at the target level), raised where
    that would put the AUTO_PERCENTILE of the brightest image above HEADROOM of full scale, as an operator lowers
    the exposure of an overexposed setup. A raised reference means a shorter exposure; never a longer one."""
    bright = max(float(np.percentile(r[::2, ::2], AUTO_PERCENTILE)) for r in radiances)  # every 4th pixel will do
    power = 1.0 / config.response_gamma
    return max(flat_radiance, bright * config.target_level**power / HEADROOM**power)


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
    if config.blur_px > 0.0:
        lit = cv2.GaussianBlur(lit, (0, 0), config.blur_px * scale)
    pixels = bin_pixels(lit, scale)  # (H, W)
    h, w = pixels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2.0  # 1 at the corners
    pixels = pixels * (1.0 - vignetting * r2) * exposure.gain

    linear_level = config.target_level ** (1.0 / config.response_gamma)  # flat powder lands at target_level
    electrons_per_unit = linear_level * config.full_well_e / flat_radiance
    electrons = rng.poisson(np.clip(pixels * electrons_per_unit, 0.0, None)).astype(np.float32)
    electrons += rng.normal(0.0, config.read_noise_e, size=electrons.shape).astype(np.float32)
    signal = electrons / config.full_well_e  # 1 at full well: brighter glints saturate
    if config.response_gamma != 1.0:
        signal = np.power(np.clip(signal, 0.0, 1.0), config.response_gamma)
    full_scale = (1 << config.bit_depth) - 1
    counts = np.clip(np.round(signal * full_scale), 0, full_scale)
    return counts.astype(np.uint8 if config.bit_depth == 8 else np.uint16)
