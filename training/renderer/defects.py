"""Defect classes (the Peregrine taxonomy) and how each one changes the layer's surface, with its exact mask.

Every generator works at render resolution and returns `Stamp`s: an additive height change and/or a replacement
of height and reflectance under a soft weight, plus the defect's exact footprint. Footprints of smooth profiles
are taken at half of the peak height change (full width at half maximum), so a mask says where the surface
differs visibly from what it should be.

The recoater moves along +y (down the image): streaks run along y, hopping ripples run across it, and incomplete
spreading starts at the far end of the stroke (the bottom edge).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from training.inference.classes import CLASS_IDS, DEFECT_CLASSES
from training.renderer.lighting import Materials
from training.renderer.surface import Part, Surface, correlated_noise


@dataclass(frozen=True)
class DefectSpec:
    """How often a class appears and how large it is. size_um: the lateral scale (streak width, ripple period,
    extent of missing powder, swelling radius, particle or pit diameter); height_um: the height change magnitude
    (groove depth or ridge height, ripple amplitude, missing depth, swelling height, particle height, pit depth)."""

    probability: float
    count: tuple[int, int]
    size_um: tuple[float, float]
    height_um: tuple[float, float]

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"defect probability must be within 0..1, got {self.probability}")
        for name, (lo, hi) in (("count", self.count), ("size_um", self.size_um), ("height_um", self.height_um)):
            if not 0 < lo <= hi:
                raise ValueError(f"defect {name} must be a range (low, high) with 0 < low <= high, got {(lo, hi)}")


DEFAULT_SPECS: dict[str, DefectSpec] = {
    "recoater_streak": DefectSpec(0.35, (1, 2), (40.0, 200.0), (10.0, 30.0)),
    "recoater_hopping": DefectSpec(0.2, (1, 1), (250.0, 500.0), (4.0, 10.0)),
    "incomplete_spreading": DefectSpec(0.15, (1, 1), (1000.0, 8000.0), (25.0, 40.0)),
    "swelling": DefectSpec(0.3, (1, 2), (250.0, 700.0), (40.0, 150.0)),
    "spatter": DefectSpec(0.45, (2, 8), (60.0, 200.0), (40.0, 150.0)),
    "pit": DefectSpec(0.3, (1, 5), (80.0, 250.0), (15.0, 50.0)),
}


@dataclass
class Stamp:
    kind: str
    mask: np.ndarray  # (H, W) bool, render resolution
    add_height_um: np.ndarray | None = None  # (H, W) float32
    replace_weight: np.ndarray | None = None  # (H, W) float32 in [0, 1]
    replace_height_um: np.ndarray | None = None
    replace_materials: Materials | None = None
    info: dict = field(default_factory=dict)


@dataclass
class LayerContext:
    """What a defect generator may look at: the render grid, the parts and the previous layer's surface."""

    shape: tuple[int, int]
    pitch_um: float  # render pitch
    scale: int  # render pixels per output pixel
    parts: list[Part]
    part_mask: np.ndarray
    previous_surface: Callable[[], Surface]


def _window(shape: tuple[int, int], cx: float, cy: float, radius: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of a square window around (cx, cy) and the coordinates relative to the centre inside it."""
    r = math.ceil(radius) + 2
    y0, x0 = min(shape[0], max(0, int(cy) - r)), min(shape[1], max(0, int(cx) - r))
    y1, x1 = max(y0, min(shape[0], int(cy) + r + 1)), max(x0, min(shape[1], int(cx) + r + 1))  # empty if outside
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - cx, yy - cy


def streak(rng: np.random.Generator, ctx: LayerContext, spec: DefectSpec) -> list[Stamp]:
    """A groove (worn or nicked blade) or ridge dragged along the recoat direction to the end of the stroke."""
    h, w = ctx.shape
    width = rng.uniform(*spec.size_um) / ctx.pitch_um  # FWHM in render pixels
    depth = rng.uniform(*spec.height_um) * (-1.0 if rng.random() < 0.6 else 1.0)
    x0 = rng.uniform(0.05, 0.95) * w
    y_start = rng.uniform(0.0, 0.6) * h
    yy = np.arange(h, dtype=np.float32)
    wobble = 0.3 * width * correlated_noise(rng, (h, 1), 40.0 * ctx.scale)[:, 0]
    centre = x0 + wobble  # (H,)
    xx = np.arange(w, dtype=np.float32)
    d = np.abs(xx[None, :] - centre[:, None])  # (H, W) distance from the streak's axis
    profile = np.where(d < width, np.cos(np.pi * d / (2.0 * width)) ** 2, 0.0)  # 1 on the axis, 0.5 at width/2
    taper = np.clip((yy - y_start) / (2.0 * width), 0.0, 1.0)[:, None]
    dh = (depth * profile * taper).astype(np.float32)
    mask = np.abs(dh) >= 0.5 * abs(depth)
    info = {"type": "groove" if depth < 0 else "ridge", "width_um": width * ctx.pitch_um, "height_um": depth}
    return [Stamp("recoater_streak", mask, add_height_um=dh, info=info)]


def hopping(rng: np.random.Generator, ctx: LayerContext, spec: DefectSpec) -> list[Stamp]:
    """Periodic ripples across the recoat direction where the blade chattered over a band of the stroke."""
    h, w = ctx.shape
    period = rng.uniform(*spec.size_um) / ctx.pitch_um
    amplitude = rng.uniform(*spec.height_um)
    length = rng.uniform(3.0, 8.0) * period
    y0 = rng.uniform(0.0, max(1.0, h - length))
    tilt = rng.uniform(-0.03, 0.03)  # blade slightly off square
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (yy + tilt * (xx - w / 2) - y0) / length  # 0..1 across the band
    envelope = np.clip(np.minimum(t, 1.0 - t) * length / period, 0.0, 1.0)  # ramps over one period at each end
    envelope = np.sin(0.5 * np.pi * envelope) ** 2
    dh = (amplitude * np.sin(2 * np.pi * (t * length) / period) * envelope).astype(np.float32)
    mask = envelope >= 0.5
    info = {"period_um": period * ctx.pitch_um, "amplitude_um": amplitude}
    return [Stamp("recoater_hopping", mask, add_height_um=dh, info=info)]


def incomplete_spreading(rng: np.random.Generator, ctx: LayerContext, spec: DefectSpec) -> list[Stamp]:
    """Too little powder reached the end of the stroke: a lower region that shows the previous layer."""
    h, w = ctx.shape
    extent = rng.uniform(*spec.size_um) / ctx.pitch_um
    depth = rng.uniform(*spec.height_um)
    xx = np.arange(w, dtype=np.float32)
    if rng.random() < 0.5:  # across the whole width, with a ragged front
        front = h - extent + 0.25 * extent * correlated_noise(rng, (1, w), 0.1 * w)[0]
    else:  # a lobe: the shortfall is local along the blade
        cx, half = rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.35) * w
        lobe = np.sqrt(np.clip(1.0 - ((xx - cx) / half) ** 2, 0.0, 1.0))
        front = h - extent * lobe + 0.1 * extent * correlated_noise(rng, (1, w), 0.05 * w)[0] * lobe
        front = np.where(lobe > 0, front, h + 1)
    yy = np.arange(h, dtype=np.float32)[:, None]
    mask = yy >= front[None, :]
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.5, 20.0 / ctx.pitch_um))
    below = ctx.previous_surface()
    info = {"extent_um": extent * ctx.pitch_um, "depth_um": depth}
    return [
        Stamp(
            "incomplete_spreading",
            mask,
            replace_weight=weight,
            replace_height_um=below.height_um - depth,
            replace_materials=below.materials,
            info=info,
        )
    ]


def swelling(rng: np.random.Generator, ctx: LayerContext, spec: DefectSpec) -> list[Stamp]:
    """Part material bulging above the bed at an edge or corner of a part (super-elevation)."""
    if not ctx.parts:
        return []
    part = ctx.parts[int(rng.integers(len(ctx.parts)))]
    corners = part.corners()
    px, py = corners[int(rng.integers(len(corners)))]
    cx, cy = (px + 0.5) * ctx.scale - 0.5, (py + 0.5) * ctx.scale - 0.5
    radius = rng.uniform(*spec.size_um) / ctx.pitch_um
    height = rng.uniform(*spec.height_um)
    sy, sx, dx, dy = _window(ctx.shape, cx, cy, 2.5 * radius)
    if dx.size == 0:  # the corner lies outside the layer (a part cut by the image's edge)
        return []
    sigma = radius / math.sqrt(2.0 * math.log(2.0))  # the half-maximum contour sits at `radius`
    bump = np.exp(-(dx**2 + dy**2) / (2.0 * sigma**2))
    inside = cv2.GaussianBlur(ctx.part_mask[sy, sx].astype(np.float32), (0, 0), max(0.5, 0.15 * radius))
    local = (height * bump * inside).astype(np.float32)
    dh = np.zeros(ctx.shape, dtype=np.float32)
    dh[sy, sx] = local
    mask = dh >= 0.5 * height
    if not mask.any():
        return []
    info = {"radius_um": radius * ctx.pitch_um, "height_um": height}
    return [Stamp("swelling", mask, add_height_um=dh, info=info)]


def _cap_particle(shape: tuple[int, int], cx: float, cy: float, radius: float, height: float):
    sy, sx, dx, dy = _window(shape, cx, cy, radius)
    r2 = (dx**2 + dy**2) / radius**2
    local = height * np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return sy, sx, local.astype(np.float32), r2 <= 1.0


def spatter(rng: np.random.Generator, ctx: LayerContext, spec: DefectSpec) -> list[Stamp]:
    """Ejected melt droplets and powder agglomerates: small raised, dark, glinting particles, alone or clumped."""
    h, w = ctx.shape
    cx, cy = rng.uniform(0.03, 0.97) * w, rng.uniform(0.03, 0.97) * h
    n = 1 if rng.random() < 0.5 else int(rng.integers(2, 6))
    dh = np.zeros(ctx.shape, dtype=np.float32)
    mask = np.zeros(ctx.shape, dtype=bool)
    for _ in range(n):
        radius = 0.5 * rng.uniform(*spec.size_um) / ctx.pitch_um
        height = min(rng.uniform(*spec.height_um), 2.0 * radius * ctx.pitch_um)
        ox, oy = np.clip(rng.normal(0.0, 1.2 * radius, size=2), -3 * radius, 3 * radius) if n > 1 else (0.0, 0.0)
        sy, sx, local, foot = _cap_particle(ctx.shape, cx + ox, cy + oy, radius, height)
        np.maximum(dh[sy, sx], local, out=dh[sy, sx])
        mask[sy, sx] |= foot
    weight = mask.astype(np.float32)
    albedo = np.full(ctx.shape, 0.25, dtype=np.float32)  # oxidised droplets
    materials = Materials(albedo, np.full_like(albedo, 0.6), np.full_like(albedo, 60.0))
    info = {"particles": n}
    return [Stamp("spatter", mask, add_height_um=dh, replace_weight=weight, replace_materials=materials, info=info)]


def pit(rng: np.random.Generator, ctx: LayerContext, spec: DefectSpec) -> list[Stamp]:
    """A small depression (keyhole or gas pore opening, divot), more often inside a part than in the powder."""
    h, w = ctx.shape
    on_part = ctx.part_mask.any() and rng.random() < 0.7
    if on_part:
        ys, xs = np.nonzero(ctx.part_mask)
        i = int(rng.integers(len(ys)))
        cx, cy = float(xs[i]), float(ys[i])
    else:
        cx, cy = rng.uniform(0.03, 0.97) * w, rng.uniform(0.03, 0.97) * h
    radius = 0.5 * rng.uniform(*spec.size_um) / ctx.pitch_um * math.sqrt(2.0)  # FWHM diameter = spec size
    depth = rng.uniform(*spec.height_um)
    sy, sx, dx, dy = _window(ctx.shape, cx, cy, radius)
    bowl = np.clip(1.0 - (dx**2 + dy**2) / radius**2, 0.0, None)  # paraboloid; half depth at radius / sqrt(2)
    dh = np.zeros(ctx.shape, dtype=np.float32)
    dh[sy, sx] = -depth * bowl
    mask = dh <= -0.5 * depth
    info = {"diameter_um": radius * math.sqrt(2.0) * ctx.pitch_um, "depth_um": depth, "on_part": bool(on_part)}
    return [Stamp("pit", mask, add_height_um=dh, info=info)]


GENERATORS: dict[str, Callable[[np.random.Generator, LayerContext, DefectSpec], list[Stamp]]] = {
    "recoater_streak": streak,
    "recoater_hopping": hopping,
    "incomplete_spreading": incomplete_spreading,
    "swelling": swelling,
    "spatter": spatter,
    "pit": pit,
}
# Composition order: region-wide changes first, small particles last (they lie on top).
ORDER: tuple[str, ...] = ("incomplete_spreading", "recoater_hopping", "recoater_streak", "swelling", "pit", "spatter")


def parse_classes(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list of class names ("all" for every class)."""
    if text.strip() == "all":
        return DEFECT_CLASSES
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in CLASS_IDS]
    if unknown or not names:
        raise ValueError(
            f"unknown defect class(es) {unknown or text!r}; choose from: {', '.join(DEFECT_CLASSES)} or 'all'"
        )
    return names


def compose(surface: Surface, stamps: list[Stamp]) -> Surface:
    """Apply stamps to a surface in order; later stamps lie on top of earlier ones."""
    height = surface.height_um.copy()
    albedo, spec, shine = (
        surface.materials.albedo.copy(),
        surface.materials.specular.copy(),
        surface.materials.shininess.copy(),
    )
    for stamp in stamps:
        if stamp.replace_weight is not None:
            wgt = stamp.replace_weight
            if stamp.replace_height_um is not None:
                height = (1.0 - wgt) * height + wgt * stamp.replace_height_um
            if stamp.replace_materials is not None:
                albedo = (1.0 - wgt) * albedo + wgt * stamp.replace_materials.albedo
                spec = (1.0 - wgt) * spec + wgt * stamp.replace_materials.specular
                shine = (1.0 - wgt) * shine + wgt * stamp.replace_materials.shininess
        if stamp.add_height_um is not None:
            height = height + stamp.add_height_um
    return Surface(height.astype(np.float32), Materials(albedo, spec, shine), surface.part_mask)
