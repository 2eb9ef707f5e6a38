"""The defect-free surface of one layer: a powder bed with printed part cross-sections.

Heights are in micrometres, relative to the nominal top of the freshly spread powder. Powder is rough at particle
scale (a smooth random field, packed spherical grains with gaps between them, or a mix: `powder_particles`) and
uneven at millimetre scale, with low, matte reflectance. Part cross-sections melted in this layer sit
slightly lower (melting consolidates the powder), are smoother and shinier, and carry scan-track ripples along a
hatch angle that rotates from layer to layer, framed by a contour track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.renderer.lighting import Materials


@dataclass(frozen=True)
class SurfaceConfig:
    particle_diameter_um: float = 35.0
    powder_roughness_um: float = 3.0
    powder_particles: float = 0.0  # share of the particle-scale texture made of discrete grains (0: a smooth field)
    unevenness_um: float = 3.0
    unevenness_scale_um: float = 2000.0
    powder_albedo: float = 0.45
    melt_depression_um: float = 8.0
    hatch_spacing_um: float = 100.0
    scan_track_um: float = 2.0
    contour_ridge_um: float = 4.0
    melted_albedo: float = 0.55
    melted_specular: float = 0.35
    melted_shininess: float = 30.0
    hatch_rotation_deg: float = 67.0
    parts_per_layer: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class Part:
    """One part cross-section, in output-pixel coordinates: a polygon (list of vertices) or an ellipse."""

    kind: str  # "polygon" | "ellipse"
    vertices: tuple[tuple[float, float], ...] = ()
    center: tuple[float, float] = (0.0, 0.0)
    axes: tuple[float, float] = (0.0, 0.0)
    angle_deg: float = 0.0

    def corners(self) -> list[tuple[float, float]]:
        """Points where swelling likes to start: polygon vertices, or the ends of the ellipse's axes."""
        if self.kind == "polygon":
            return list(self.vertices)
        a = math.radians(self.angle_deg)
        (cx, cy), (ax, ay) = self.center, self.axes
        return [
            (cx + ax * math.cos(a), cy + ax * math.sin(a)),
            (cx - ax * math.cos(a), cy - ax * math.sin(a)),
            (cx - ay * math.sin(a), cy + ay * math.cos(a)),
            (cx + ay * math.sin(a), cy - ay * math.cos(a)),
        ]

    def to_json(self) -> dict:
        if self.kind == "polygon":
            return {"kind": "polygon", "vertices": [[round(x, 2), round(y, 2)] for x, y in self.vertices]}
        return {
            "kind": "ellipse",
            "center": [round(c, 2) for c in self.center],
            "axes": [round(a, 2) for a in self.axes],
            "angle_deg": round(self.angle_deg, 2),
        }


@dataclass(frozen=True)
class Surface:
    height_um: np.ndarray  # (H, W) float32
    materials: Materials
    part_mask: np.ndarray  # (H, W) bool, melted in this layer


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian random field with correlation length sigma_px, zero mean and unit standard deviation."""
    h, w = shape
    if sigma_px > 8.0:  # draw coarse noise and interpolate: same field statistics, far cheaper
        factor = sigma_px / 2.0
        small = (max(4, math.ceil(h / factor) + 4), max(4, math.ceil(w / factor) + 4))
        coarse = cv2.GaussianBlur(rng.standard_normal(small).astype(np.float32), (0, 0), 2.0)
        field = cv2.resize(coarse, (int(small[1] * factor), int(small[0] * factor)), interpolation=cv2.INTER_CUBIC)
        field = field[:h, :w]
    else:
        field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), max(sigma_px, 0.3))
    field = field - field.mean()
    return field / max(float(field.std()), 1e-12)


def packed_grains(rng: np.random.Generator, shape: tuple[int, int], diameter_px: float) -> np.ndarray:
    """Heights of spherical grains of `diameter_px` whose centres are scattered one per grain area: each pixel
    takes the cap of its nearest grain, zero in the gaps between them. Zero mean and unit standard deviation."""
    h, w = shape
    radius = max(diameter_px / 2.0, 0.5)
    count = max(1, round(h * w / (2.0 * radius) ** 2))
    centres = np.full(shape, 255, np.uint8)
    centres[rng.integers(0, h, count), rng.integers(0, w, count)] = 0
    distance = cv2.distanceTransform(centres, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    field = np.sqrt(np.maximum(radius**2 - distance**2, 0.0))
    field = field - field.mean()
    return field / max(float(field.std()), 1e-12)


def powder_texture(
    rng: np.random.Generator, shape: tuple[int, int], diameter_px: float, particles: float
) -> np.ndarray:
    """The powder's particle-scale height pattern, zero mean and unit standard deviation: a smooth random field
    with the grains' correlation length, packed discrete grains, or a mix weighted by `particles` (0..1). With
    particles at 0 the generator draws exactly what it drew before grains existed."""
    smooth = correlated_noise(rng, shape, 0.5 * diameter_px)
    if particles <= 0.0:
        return smooth
    mixed = (1.0 - particles) * smooth + particles * packed_grains(rng, shape, diameter_px)
    return mixed / max(float(mixed.std()), 1e-12)


def random_parts(rng: np.random.Generator, size: int, count: int) -> list[Part]:
    """A few polygons (rotated rectangles, convex polygons) and ellipses inside a size x size field."""
    parts: list[Part] = []
    for _ in range(count):
        cx, cy = rng.uniform(0.15, 0.85, size=2) * size
        radius = rng.uniform(0.08, 0.22) * size
        kind = rng.choice(["rectangle", "polygon", "ellipse"], p=[0.4, 0.3, 0.3])
        if kind == "ellipse":
            axes = (radius, radius * rng.uniform(0.4, 1.0))
            parts.append(Part("ellipse", center=(cx, cy), axes=axes, angle_deg=float(rng.uniform(0, 180))))
            continue
        if kind == "rectangle":
            half_w, half_h = radius, radius * rng.uniform(0.3, 1.0)
            a = rng.uniform(0, math.pi)
            local = [(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)]
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(5, 8))))
            local = [
                (radius * rng.uniform(0.6, 1.0) * math.cos(t), radius * rng.uniform(0.6, 1.0) * math.sin(t))
                for t in angles
            ]
            a = 0.0
        vertices = tuple(
            (float(cx + x * math.cos(a) - y * math.sin(a)), float(cy + x * math.sin(a) + y * math.cos(a)))
            for x, y in local
        )
        parts.append(Part("polygon", vertices=vertices))
    return parts


def rasterize_parts(parts: list[Part], shape: tuple[int, int], scale: float) -> np.ndarray:
    """Binary mask (H, W) of the parts drawn at `scale` render pixels per output pixel."""
    mask = np.zeros(shape, dtype=np.uint8)
    shift = 4  # sub-pixel precision for OpenCV's fixed-point drawing
    for part in parts:
        if part.kind == "polygon":
            pts = np.round((np.array(part.vertices) + 0.5) * scale * (1 << shift) - 0.5 * (1 << shift)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=shift)
        else:
            center = tuple(round(((c + 0.5) * scale - 0.5) * (1 << shift)) for c in part.center)
            axes = tuple(round(a * scale * (1 << shift)) for a in part.axes)
            cv2.ellipse(mask, center, axes, part.angle_deg, 0, 360, 1, thickness=-1, lineType=cv2.LINE_8, shift=shift)
    return mask.astype(bool)


def hatch_angle(layer_index: int, config: SurfaceConfig, offset_deg: float = 0.0) -> float:
    return (offset_deg + layer_index * config.hatch_rotation_deg) % 180.0


def layer_surface(
    rng: np.random.Generator,
    part_mask: np.ndarray,
    pitch_um: float,
    hatch_deg: float,
    config: SurfaceConfig,
) -> Surface:
    """Height and reflectance of a defect-free layer at render resolution (pitch_um per pixel)."""
    shape = part_mask.shape
    powder = config.powder_roughness_um * powder_texture(rng, shape, config.particle_diameter_um / pitch_um,
                                                         config.powder_particles)  # fmt: skip
    uneven = config.unevenness_um * correlated_noise(rng, shape, config.unevenness_scale_um / pitch_um)
    powder_height = powder + uneven

    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32) * pitch_um  # micrometres
    a = math.radians(hatch_deg)
    across = -xx * math.sin(a) + yy * math.cos(a)  # distance across the scan tracks
    tracks = config.scan_track_um * np.cos(2 * math.pi * across / config.hatch_spacing_um)
    fine = 0.3 * config.scan_track_um * correlated_noise(rng, shape, 10.0 / pitch_um)
    inside = cv2.distanceTransform(part_mask.astype(np.uint8), cv2.DIST_L2, 5) * pitch_um  # um from the edge
    contour = config.contour_ridge_um * np.exp(-(((inside - config.hatch_spacing_um) / config.hatch_spacing_um) ** 2))
    melted_height = uneven - config.melt_depression_um + tracks + fine + contour

    soft = cv2.GaussianBlur(part_mask.astype(np.float32), (0, 0), max(0.5, 15.0 / pitch_um))  # 15 um melt edge
    height = (1.0 - soft) * powder_height + soft * melted_height

    grain = correlated_noise(rng, shape, 0.5 * config.particle_diameter_um / pitch_um)
    powder_albedo = config.powder_albedo * (1.0 + 0.08 * grain)
    albedo = (1.0 - soft) * powder_albedo + soft * config.melted_albedo
    specular = (1.0 - soft) * 0.03 + soft * config.melted_specular
    shininess = (1.0 - soft) * 4.0 + soft * config.melted_shininess
    materials = Materials(albedo.astype(np.float32), specular.astype(np.float32), shininess.astype(np.float32))
    return Surface(height.astype(np.float32), materials, part_mask)
