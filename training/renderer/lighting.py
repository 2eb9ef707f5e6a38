"""Light geometry and the shading of a height field: normals, Lambert + Blinn-Phong, cast shadows.

Coordinates used everywhere in this project: x runs along image columns (left to right), y along rows (top to
bottom), z is height above the bed. A light's azimuth phi is measured in degrees counter-clockwise from +x as
seen on screen, so azimuth 0 is a light beyond the right edge of the image and azimuth 90 a light beyond the top
edge. Its elevation theta is the angle above the bed plane. Channel k of every stacked image is "lit from
azimuth phi_k".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.renderer.physics import LIMITS


@dataclass(frozen=True)
class Light:
    azimuth_deg: float
    elevation_deg: float
    intensity: float = 1.0  # radiance scale against the exposure reference (a light of intensity 1)

    def direction(self) -> np.ndarray:
        """Unit vector (x, y, z) from the surface towards the light, in image coordinates (y down)."""
        phi = math.radians(self.azimuth_deg)
        theta = math.radians(self.elevation_deg)
        return np.array(
            [math.cos(theta) * math.cos(phi), -math.cos(theta) * math.sin(phi), math.sin(theta)],
            dtype=np.float64,
        )


def parse_azimuths(text: str | Sequence[float]) -> tuple[float, float, float]:
    """Parse "0,120,240" (or a sequence) into three distinct azimuths in [0, 360)."""
    if isinstance(text, str):
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError as err:
            raise ValueError(f"light azimuths must be numbers in degrees such as '0,120,240', got {text!r}") from err
    else:
        values = [float(v) for v in text]
    if len(values) != 3:
        raise ValueError(f"expected exactly three light azimuths (one per image), got {len(values)}: {text!r}")
    values = [v % 360.0 for v in values]
    if len({round(v, 6) for v in values}) != 3:
        raise ValueError(f"the three light azimuths must differ, got {values}")
    return (values[0], values[1], values[2])


def check_elevation(elevation_deg: float) -> float:
    limit = LIMITS["elevation_deg"]
    if not limit.holds(elevation_deg):
        raise ValueError(
            f"light elevation must be between {limit.low:g} and {limit.high:g} degrees above the bed, "
            f"got {elevation_deg}"
        )
    return float(elevation_deg)


def surface_normals(height_um: np.ndarray, pitch_um: float) -> np.ndarray:
    """Unit normals of z = h(x, y); returns (H, W, 3) float32 with components (x, y, z)."""
    dh_dy, dh_dx = np.gradient(height_um.astype(np.float32), pitch_um)  # (H, W) each, micrometre per micrometre
    normals = np.stack([-dh_dx, -dh_dy, np.ones_like(dh_dx)], axis=-1)  # (H, W, 3)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return normals


def shift_image(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Move an image's content by (dx, dy) pixels (positive: right / down); bilinear, edges replicated."""
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    size = (image.shape[1], image.shape[0])
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def light_visibility(
    height_um: np.ndarray, pitch_um: float, light: Light, source_radius_deg: float = 1.5
) -> np.ndarray:
    """Fraction of the light's disc visible from each pixel (1 lit, 0 in full shadow), float32 (H, W).

    Marches from every pixel towards the light, one pixel per step, and keeps the largest amount by which the
    terrain rises above the ray to the light's centre; a light of finite angular radius gives a soft penumbra.
    """
    h = height_um.astype(np.float32)
    theta = math.radians(light.elevation_deg)
    tan_light = math.tan(theta)
    # A light disc of angular radius r spans elevation slopes tan(theta - r) .. tan(theta + r).
    half_width = 0.5 * (
        math.tan(theta + math.radians(source_radius_deg)) - math.tan(theta - math.radians(source_radius_deg))
    )
    relief = float(h.max() - h.min())
    lowest = math.tan(max(theta - math.radians(source_radius_deg), math.radians(1.0)))  # the disc's lowest edge
    longest = math.ceil(math.hypot(*h.shape))  # no shadow is longer than the image
    steps = min(longest, math.ceil(relief / (pitch_um * lowest)) + 1)
    if relief <= 0.0 or steps < 1:
        return np.ones_like(h)
    d = light.direction()
    ux, uy = d[0] / math.hypot(d[0], d[1]), d[1] / math.hypot(d[0], d[1])
    excess = np.full_like(h, -np.inf)
    for s in range(1, steps + 1):
        ahead = shift_image(h, -s * ux, -s * uy)  # height of the terrain s pixels towards the light
        np.maximum(excess, (ahead - h) / (s * pitch_um) - tan_light, out=excess)
    visibility = np.clip(0.5 - excess / (2.0 * half_width), 0.0, 1.0)
    return visibility.astype(np.float32)


AMBIENT = 0.08  # share of diffuse light that reaches every pixel, shadowed or not


def flat_radiance(albedo: float, light: Light, ambient: float = AMBIENT) -> float:
    """Radiance of a flat, matte patch of the given albedo under `light`: the exposure reference."""
    return light.intensity * albedo * (ambient + (1.0 - ambient) * math.sin(math.radians(light.elevation_deg)))


@dataclass(frozen=True)
class Materials:
    """Per-pixel reflectance maps: diffuse albedo, specular strength and Blinn-Phong exponent."""

    albedo: np.ndarray
    specular: np.ndarray
    shininess: np.ndarray


def shade(
    height_um: np.ndarray,
    pitch_um: float,
    materials: Materials,
    light: Light,
    ambient: float = AMBIENT,
    normals: np.ndarray | None = None,
) -> np.ndarray:
    """Radiance seen by an overhead camera under one light (arbitrary linear units), float32 (H, W)."""
    if normals is None:
        normals = surface_normals(height_um, pitch_um)
    to_light = light.direction().astype(np.float32)
    half = to_light + np.array([0.0, 0.0, 1.0], dtype=np.float32)  # the camera looks straight down
    half /= np.linalg.norm(half)
    lambert = np.clip(normals @ to_light, 0.0, None)  # (H, W)
    n_dot_h = np.clip(normals @ half, 0.0, None)
    specular = materials.specular * np.power(n_dot_h, materials.shininess)
    visible = light_visibility(height_um, pitch_um, light)
    radiance = materials.albedo * (ambient + (1.0 - ambient) * lambert * visible) + specular * visible
    return (light.intensity * radiance).astype(np.float32)
