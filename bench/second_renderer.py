"""A second powder-bed renderer, sharing no code with `training.renderer`, to test how far a model generalises.

Powder is discrete spherical particles on two jittered grids, parts are melted shapes with scalloped scan tracks,
shading is Oren-Nayar diffuse plus Blinn-Phong specular under a light of finite size (horizon-traced soft shadows)
with cavity-occluded ambient, and the camera adds a tone curve, vignette, light fall-off, shot and read noise.
Only numpy, OpenCV and the standard library are imported. Heights are in micrometres, image y runs down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

CLASSES = ("recoater_streak", "recoater_hopping", "incomplete_spreading", "swelling", "spatter", "pit")  # id = i + 1
SHAPES = ("rounded_rect", "circle", "l_shape", "ring")


@dataclasses.dataclass(frozen=True)
class SecondRendererConfig:
    size: int = 512  # output side, pixels
    pitch_um: float = 25.0  # output pixel pitch
    azimuths_deg: tuple[float, float, float] = (0.0, 120.0, 240.0)  # light k, counter-clockwise from +x
    elevation_deg: float = 30.0
    bit_depth: int = 8
    clean_fraction: float = 0.2
    exposure: tuple[float, float] = (0.5, 0.7)  # range of the flat-powder level, fraction of full scale
    oversample: int = 2  # rendered at this many times the output resolution, then area-averaged
    parts: tuple[int, int] = (1, 4)  # melted parts per layer, inclusive range
    defects: tuple[int, int] = (1, 6)  # defects per defective layer, inclusive range
    classes: tuple[str, ...] = CLASSES  # the classes a defect is drawn from

    def __post_init__(self) -> None:
        for name in ("azimuths_deg", "exposure", "parts", "defects", "classes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON become tuples

        def check(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"SecondRendererConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        check(isinstance(self.size, int) and 64 <= self.size <= 8192, "size", "a whole number of pixels, 64 to 8192")
        check(5.0 <= self.pitch_um <= 60.0, "pitch_um", "5 to 60 micrometres per pixel (particles are 20-60 um)")
        azimuths = [a % 360.0 for a in self.azimuths_deg]
        distinct = len(azimuths) == 3 and all(
            min(abs(a - b), 360.0 - abs(a - b)) >= 1.0 for i, a in enumerate(azimuths) for b in azimuths[i + 1 :]
        )
        check(distinct, "azimuths_deg", "three azimuths in degrees, at least 1 degree apart")
        check(5.0 <= self.elevation_deg <= 85.0, "elevation_deg", "5 to 85 degrees above the bed")
        check(self.bit_depth in (8, 16), "bit_depth", "8 or 16")
        check(0.0 <= self.clean_fraction <= 1.0, "clean_fraction", "a fraction from 0 to 1")
        check(len(self.exposure) == 2 and 0.1 <= self.exposure[0] <= self.exposure[1] <= 0.9, "exposure",
              "(low, high) with 0.1 <= low <= high <= 0.9")  # fmt: skip
        check(self.oversample in (1, 2, 3, 4), "oversample", "1, 2, 3 or 4")
        check(len(self.parts) == 2 and 0 <= self.parts[0] <= self.parts[1] <= 8, "parts", "(low, high) within 0..8")
        check(len(self.defects) == 2 and 1 <= self.defects[0] <= self.defects[1] <= 12, "defects",
              "(low, high) within 1..12")  # fmt: skip
        check(len(self.classes) > 0 and set(self.classes) <= set(CLASSES), "classes",
              f"a non-empty selection of {', '.join(CLASSES)}")  # fmt: skip


def parse_azimuths(text: str) -> tuple[float, float, float]:
    """`0,120,240` -> three azimuths in degrees (the command's --lights)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"--lights expects three angles in degrees such as 0,120,240, got {text!r}") from err
    if len(values) != 3:
        raise ValueError(f"--lights expects exactly three azimuths, got {len(values)} in {text!r}")
    return values  # type: ignore[return-value]


def _rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """One independent stream per concern, so switching defects off changes nothing else in the layer."""
    return np.random.default_rng([seed, index, zlib.crc32(stream.encode())])


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclasses.dataclass
class _Surface:
    height: np.ndarray  # (N, N) um
    albedo: np.ndarray  # (N, N) diffuse reflectance
    roughness: np.ndarray  # (N, N) Oren-Nayar sigma, radians
    gloss: np.ndarray  # (N, N) Blinn-Phong strength
    shininess: np.ndarray  # (N, N) Blinn-Phong exponent

    def paint(self, rows: slice, cols: slice, weight: np.ndarray, **targets: float) -> None:
        """Blend the named material maps toward target values with a 0..1 weight (a window of the layer)."""
        for name, value in targets.items():
            layer = getattr(self, name)[rows, cols]
            layer += weight * (value - layer)


def _particles(rng: np.random.Generator, n: int, pitch: float, cell_um: float, radius_um: tuple[float, float],
               presence: float, base_um: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Spherical particles, one per jittered grid cell: the top of the highest sphere over each pixel, and its albedo.

    The image is cut into cells of k x k pixels viewed as a (cells, k, cells, k) array, so every neighbouring
    cell's particle is tested by broadcasting alone."""
    k = max(1, round(cell_um / pitch))
    cell = k * pitch
    reach = math.ceil(radius_um[1] / cell)
    cells = -(-n // k)
    m = cells + 2 * reach
    f32 = np.float32
    cx, cy = (rng.random((2, m, m)) * cell).astype(f32)
    r = radius_um[0] + (radius_um[1] - radius_um[0]) * rng.beta(2.0, 3.0, (m, m))
    r2 = np.where(rng.random((m, m)) < presence, r * r, -1.0).astype(f32)
    z = (base_um - rng.uniform(0.0, 0.6, (m, m)) * r).astype(f32)  # centre below the bed plane: partly sunk
    albedo = rng.lognormal(0.0, 0.18, (m, m)).astype(f32)
    sub = ((np.arange(k) + 0.5) * pitch).astype(f32)  # pixel centres inside a cell
    top = np.full((cells, k, cells, k), -np.inf, f32)
    tone = np.ones_like(top)
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            win = (slice(reach + dy, reach + dy + cells), slice(reach + dx, reach + dx + cells))
            ey = sub[None, :, None, None] - (dy * cell + cy[win])[:, None, :, None]  # (cells, k, cells, 1)
            ex = sub[None, None, None, :] - (dx * cell + cx[win])[:, None, :, None]  # (cells, 1, cells, k)
            cap = (r2[win][:, None, :, None] - ey * ey) - ex * ex  # (cells, k, cells, k): r^2 - d^2
            hit = cap > 0
            np.sqrt(np.maximum(cap, 0, out=cap), out=cap)
            cap += z[win][:, None, :, None]
            hit &= cap > top
            np.copyto(top, cap, where=hit)
            np.copyto(tone, albedo[win][:, None, :, None], where=hit)
    return top.reshape(cells * k, -1)[:n, :n], tone.reshape(cells * k, -1)[:n, :n]


def _powder(rng: np.random.Generator, n: int, pitch: float) -> tuple[_Surface, dict]:
    """A bed of two particle layers over a dark packed floor, with a gentle density-driven albedo drift."""
    top, top_tone = _particles(rng, n, pitch, 36.0, (10.0, 30.0), 0.8, 0.0)
    under, under_tone = _particles(rng, n, pitch, 26.0, (10.0, 25.0), 1.0, -12.0)
    height = np.maximum(np.maximum(top, under), -30.0)  # a packed floor where no particle is seen
    tone = np.where(top >= under, top_tone, under_tone)
    drift = cv2.resize(rng.normal(0.0, 0.04, (6, 6)), (n, n), interpolation=cv2.INTER_CUBIC)
    values = {"powder_albedo": float(rng.uniform(0.45, 0.7)), "powder_roughness": float(rng.uniform(0.35, 0.6))}
    albedo = (values["powder_albedo"] * tone * (1.0 + drift)).astype(np.float32)
    full = partial(np.full, (n, n), dtype=np.float32)
    surface = _Surface(height.astype(np.float32), albedo, full(values["powder_roughness"]), full(0.02), full(5.0))
    return surface, values


def _shape_distance(rng: np.random.Generator, shape: str, field: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (um, negative inside) to one part of the given shape, placed at random in the field."""
    cx, cy = rng.uniform(0.2, 0.8, 2) * field
    half = rng.uniform(0.07, 0.18, 2) * field
    turn = rng.uniform(0.0, math.pi)
    u = (x - cx) * math.cos(turn) + (y - cy) * math.sin(turn)
    v = (y - cy) * math.cos(turn) - (x - cx) * math.sin(turn)

    def box(u0: float, v0: float, hu: float, hv: float, radius: float) -> np.ndarray:
        qu, qv = np.abs(u - u0) - (hu - radius), np.abs(v - v0) - (hv - radius)
        return np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0) - radius

    if shape == "circle":
        return np.hypot(u, v) - half[0]
    if shape == "ring":
        return np.abs(np.hypot(u, v) - half[0]) - rng.uniform(0.2, 0.45) * half[0]
    radius = rng.uniform(0.05, 0.4) * half.min()
    if shape == "rounded_rect":
        return box(0.0, 0.0, half[0], half[1], radius)
    arm = rng.uniform(0.3, 0.5) * half.min()  # an L: two bars sharing the corner at (-half[0], -half[1])
    return np.minimum(box(0.0, arm - half[1], half[0], arm, radius), box(arm - half[0], 0.0, arm, half[1], radius))


def _parts(rng: np.random.Generator, surface: _Surface, config: SecondRendererConfig, pitch: float,
           x: np.ndarray, y: np.ndarray) -> tuple[list[np.ndarray], dict]:  # fmt: skip
    """Melt a few shapes into the bed: lowered, scan-tracked, with a contour rim and their own material."""
    field = config.size * config.pitch_um
    shapes = [SHAPES[i] for i in rng.integers(0, len(SHAPES), rng.integers(config.parts[0], config.parts[1] + 1))]
    distances = [_shape_distance(rng, shape, field, x, y).astype(np.float32) for shape in shapes]
    brighter = bool(rng.random() < 0.5)
    values = {
        "parts": shapes, "part_appearance": "brighter" if brighter else "darker",
        "part_albedo_ratio": float(rng.uniform(1.0, 1.3) if brighter else rng.uniform(0.2, 0.4)),
        "part_gloss": float(rng.uniform(0.15, 0.4) if brighter else rng.uniform(0.02, 0.1)),
        "part_shininess": float(rng.uniform(15, 60) if brighter else rng.uniform(5, 20)),
        "part_roughness": float(rng.uniform(0.05, 0.2) if brighter else rng.uniform(0.1, 0.3)),
        "hatch_um": float(rng.uniform(70, 120)), "hatch_angle_deg": float(rng.uniform(0, 180)),
        "track_height_um": float(rng.uniform(1.5, 4.0)), "ripple_um": float(rng.uniform(30, 60)),
        "melt_drop_um": float(rng.uniform(2.0, 8.0)), "contour_um": float(rng.uniform(60, 100)),
    }  # fmt: skip
    values["part_albedo"] = float(surface.albedo.mean()) * values["part_albedo_ratio"]
    if not distances:
        return [], values
    inside = -np.minimum.reduce(distances)  # um inside the nearest part's edge
    weight = _smoothstep(inside / pitch + 0.5)
    angle = math.radians(values["hatch_angle_deg"])
    across = (x * math.cos(angle) + y * math.sin(angle)) / values["hatch_um"]
    bead = 1.0 - (2.0 * (across % 1.0) - 1.0) ** 2  # one parabolic bead per track, cusps between
    along = (y * math.cos(angle) - x * math.sin(angle)) / values["ripple_um"] + 0.5 * bead  # chevron melt ripples
    rim = np.exp(-(((inside - values["contour_um"] / 2) / (values["contour_um"] / 3)) ** 2))
    level = float(surface.height.mean()) - values["melt_drop_um"]
    melted = level + values["track_height_um"] * (bead + 0.25 * (along % 1.0)) + 2.0 * rim
    surface.height += weight * (melted - surface.height)
    surface.paint(slice(None), slice(None), weight, albedo=values["part_albedo"], roughness=values["part_roughness"],
                  gloss=values["part_gloss"], shininess=values["part_shininess"])  # fmt: skip
    return distances, values


# Defects: each edits the surface inside a window and returns (rows, cols, relative profile 0..1, params), or None
# where it cannot be placed; the relative profile is the change over its peak, its half maximum the truth footprint.
_Edit = tuple[slice, slice, np.ndarray, dict] | None


def _window(layer: dict, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The internal-grid window covering [x0, x1] x [y0, y1] um, aligned to output pixels, and its coordinates."""
    block = layer["pitch"] * layer["s"]
    lo = [max(0, math.floor(v / block)) * layer["s"] for v in (x0, y0)]
    hi = [min(layer["size"], math.ceil(v / block)) * layer["s"] for v in (x1, y1)]
    cols, rows = slice(lo[0], max(lo[0], hi[0])), slice(lo[1], max(lo[1], hi[1]))
    return rows, cols, layer["x"][:, cols], layer["y"][rows, :]


def _streak(rng: np.random.Generator, surface: _Surface, layer: dict) -> _Edit:
    width, depth = rng.uniform(50, 200), rng.uniform(10, 40)
    sign = -1.0 if rng.random() < 0.7 else 1.0  # a groove from a nicked blade, or a ridge
    x0, y0 = rng.uniform(0.05, 0.95) * layer["field"], rng.uniform(0.0, 0.8) * layer["field"]
    drift = rng.uniform(-0.01, 0.01)
    span = 2 * width + abs(drift) * layer["field"]
    rows, cols, x, y = _window(layer, x0 - span, y0, x0 + span, layer["field"])
    profile = np.exp(-4 * math.log(2) * ((x - x0 - drift * (y - y0)) / width) ** 2) * _smoothstep((y - y0) / 150.0)
    surface.height[rows, cols] += sign * depth * profile
    surface.albedo[rows, cols] *= 1.0 - 0.1 * (sign < 0) * profile
    return rows, cols, profile, {"width_um": width, "height_um": sign * depth, "x_um": x0, "start_um": y0}


def _hopping(rng: np.random.Generator, surface: _Surface, layer: dict) -> _Edit:
    period, amplitude = rng.uniform(200, 600), rng.uniform(3, 12)
    band = min(rng.uniform(2, 5) * period, 0.9 * layer["field"])
    y0 = rng.uniform(0, layer["field"] - band)
    rows, cols, x, y = _window(layer, 0, y0, layer["field"], y0 + band)
    t = np.clip((y - y0) / band, 0, 1)
    envelope = _smoothstep(np.minimum(t, 1 - t) / 0.25) * np.ones_like(x)  # tapered band, full width
    wave = np.sin(2 * math.pi * (y - y0) / period + rng.uniform(0, 2 * math.pi)) * (1 - 0.15 * np.cos(x / 900.0))
    surface.height[rows, cols] += amplitude * envelope * wave
    surface.albedo[rows, cols] *= 1.0 + 0.08 * envelope * wave  # denser powder on the crests
    return rows, cols, envelope, {"period_um": period, "amplitude_um": amplitude, "band_um": band, "y_um": y0}


def _spreading(rng: np.random.Generator, surface: _Surface, layer: dict) -> _Edit:
    field, depth, edge = layer["field"], rng.uniform(25, 45), 80.0
    if rng.random() < 0.5:  # full width, wavy upper boundary
        top = field * (1 - rng.uniform(0.08, 0.3))
        wave, period, phase = rng.uniform(0, 0.04) * field, rng.uniform(0.3, 1.0) * field, rng.uniform(0, 6.3)
        rows, cols, x, y = _window(layer, 0, top - wave - edge, field, field)
        inside = y - (top + wave * np.sin(2 * math.pi * x / period + phase))
        shape = {"shape": "full_width", "top_um": top}
    else:  # a lobe growing from the bottom edge
        cx, a, b = rng.uniform(0.15, 0.85) * field, rng.uniform(0.1, 0.3) * field, rng.uniform(0.08, 0.3) * field
        rows, cols, x, y = _window(layer, cx - a - edge, field - b - edge, cx + a + edge, field)
        inside = (1 - np.hypot((x - cx) / a, (y - field) / b)) * min(a, b)
        shape = {"shape": "lobe", "x_um": cx, "width_um": 2 * a, "height_um": b}
    profile = _smoothstep(inside / edge + 0.5)
    old = np.ascontiguousarray(surface.height[rows, cols])
    relief = old - cv2.GaussianBlur(old, (0, 0), 40.0 / layer["pitch"])
    surface.height[rows, cols] -= profile * (depth + 0.6 * relief)  # the previous layer: lower and sintered flatter
    previous = layer["powder_albedo"] * rng.uniform(0.3, 0.5)  # darker: fused and sintered metal
    surface.paint(rows, cols, profile, albedo=previous, roughness=0.25, gloss=0.06, shininess=12.0)
    return rows, cols, profile, {"depth_um": depth, **shape}


def _bump(layer: dict, cx: float, cy: float, diameter: float, reach: float) -> tuple[slice, slice, np.ndarray]:
    """A window around (cx, cy) and each pixel's distance from it in diameters."""
    rows, cols, x, y = _window(layer, cx - reach, cy - reach, cx + reach, cy + reach)
    return rows, cols, np.hypot(x - cx, y - cy) / diameter


def _swelling(rng: np.random.Generator, surface: _Surface, layer: dict) -> _Edit:
    if not layer["parts"]:
        return None
    part = layer["parts"][rng.integers(len(layer["parts"]))]
    ring = np.ones((3, 3), np.uint8)
    edge = part & ~cv2.erode(layer["melted"].astype(np.uint8), ring).astype(bool)  # its edge on the melted outline
    if not edge.any():  # wholly inside other parts: its own outline
        edge = part & ~cv2.erode(part.astype(np.uint8), ring).astype(bool)
    py, px = np.nonzero(edge)
    if not len(px):
        return None
    at_corner = bool(rng.random() < 0.5)
    if at_corner:  # the edge pixel furthest along a random direction: a corner of a polygonal part
        turn = rng.uniform(0, 2 * math.pi)
        i = int(np.argmax(px * math.cos(turn) + py * math.sin(turn)))
    else:
        i = int(rng.integers(len(px)))
    cx, cy = (px[i] + 0.5) * layer["pitch_out"], (py[i] + 0.5) * layer["pitch_out"]
    height, diameter = rng.uniform(40, 150), rng.uniform(200, 700)
    rows, cols, rho = _bump(layer, cx, cy, diameter, 1.5 * diameter)
    profile = np.exp(-4 * math.log(2) * rho**2)  # full width at half maximum = diameter
    surface.height[rows, cols] += height * profile
    weight = np.minimum(1.0, 2 * profile)
    surface.paint(rows, cols, weight, albedo=layer["part_albedo"] * 0.8, roughness=0.1, gloss=0.35, shininess=30.0)
    return rows, cols, profile, {"height_um": height, "diameter_um": diameter, "at_corner": at_corner}


def _spatter(rng: np.random.Generator, surface: _Surface, layer: dict) -> _Edit:
    field, count = layer["field"], int(rng.integers(1, 5))
    centre = rng.uniform(0.05, 0.95, 2) * field
    offsets = [np.clip(rng.normal(0, 250, 2), -750, 750) for _ in range(count)]  # a cluster within ~1 mm
    spots = [(*(centre + offset).clip(0, field), rng.uniform(50, 250)) for offset in offsets]
    heights = [min(rng.uniform(40, 150), d) for *_, d in spots]
    rows, cols, x, y = _window(layer, *(centre - 900), *(centre + 900))
    profile = np.zeros((y.shape[0], x.shape[1]), np.float32)
    for (sx, sy, diameter), height in zip(spots, heights, strict=True):
        cap = np.sqrt(np.clip(1 - (np.hypot(x - sx, y - sy) / (diameter / 2)) ** 2, 0, 1))  # half ellipsoid
        surface.height[rows, cols] += height * cap
        profile = np.maximum(profile, cap)
    surface.paint(rows, cols, np.minimum(1.0, 4 * profile), albedo=layer["powder_albedo"] * rng.uniform(0.25, 0.45),
                  roughness=0.1, gloss=0.3, shininess=40.0)  # fmt: skip
    return rows, cols, profile, {"particles": count, "diameters_um": [s[2] for s in spots], "heights_um": heights}


def _pit(rng: np.random.Generator, surface: _Surface, layer: dict) -> _Edit:
    diameter, depth = rng.uniform(80, 300), rng.uniform(15, 60)
    radius_px = max(1, round(diameter / layer["pitch_out"]))
    inner = cv2.erode(layer["melted"].astype(np.uint8), np.ones((2 * radius_px + 1,) * 2, np.uint8))
    py, px = np.nonzero(inner if inner.any() else layer["melted"])
    if len(px) and rng.random() < 0.8:  # mostly inside parts
        i = rng.integers(len(px))
        cx, cy = (px[i] + 0.5) * layer["pitch_out"], (py[i] + 0.5) * layer["pitch_out"]
    else:
        cx, cy = rng.uniform(0.05, 0.95, 2) * layer["field"]
    rows, cols, rho = _bump(layer, cx, cy, diameter, 1.2 * diameter)
    rho = rho * 2 * 0.541  # (1 - rho^2)^2 is half its peak at rho = 0.541: there the footprint spans the diameter
    profile = np.clip(1 - rho**2, 0, 1) ** 2
    surface.height[rows, cols] -= depth * profile - 0.15 * depth * np.exp(-(((rho - 1) / 0.15) ** 2))  # small rim
    surface.albedo[rows, cols] *= 1 - 0.25 * profile
    return rows, cols, profile, {"diameter_um": diameter, "depth_um": depth}


DEFECTS = dict(zip(CLASSES, (_streak, _hopping, _spreading, _swelling, _spatter, _pit), strict=True))


# Shading: Oren-Nayar diffuse + Blinn-Phong specular, soft shadows from the horizon toward a light of finite size.


def _area(image: np.ndarray, s: int) -> np.ndarray:
    """Mean of each s x s block: what one output pixel integrates."""
    if s == 1:
        return image
    h, w = image.shape
    return image.reshape(h // s, s, w // s, s).mean(axis=(1, 3), dtype=np.float32)


def _visibility(height: np.ndarray, pitch: float, azimuth: float, elevation: float, penumbra: float) -> np.ndarray:
    """Fraction of the light's disc above each pixel's horizon, the horizon traced toward the light at growing steps."""
    toward = (math.cos(math.radians(azimuth)), -math.sin(math.radians(azimuth)))  # (column, row) per step
    low, high = (math.tan(math.radians(elevation + d)) for d in (-penumbra, penumbra))
    reach = float(height.max() - height.min()) / (low * pitch)  # no rise can shade beyond this many pixels
    steepest = np.full(height.shape, -np.inf, np.float32)
    step = 1.0
    while step <= reach:
        shift = np.float32([[1, 0, step * toward[0]], [0, 1, step * toward[1]]])
        ahead = cv2.warpAffine(height, shift, height.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        np.maximum(steepest, (ahead - height) / (step * pitch), out=steepest)
        step = max(step + 1.0, step * 1.25)
    return _smoothstep((high - steepest) / (high - low))


def _shade(surface: _Surface, pitch: float, config: SecondRendererConfig, camera: dict) -> list[np.ndarray]:
    """Radiance of the surface under each light (unit irradiance), seen from straight above."""
    gx, gy = (cv2.Sobel(surface.height, cv2.CV_32F, dx, 1 - dx, ksize=1, scale=0.5 / pitch,
                        borderType=cv2.BORDER_REPLICATE) for dx in (1, 0))  # fmt: skip
    nz = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    nx, ny = -gx * nz, -gy * nz  # the normal in (x right, y down, z up)
    cavity = cv2.GaussianBlur(surface.height, (0, 0), 30.0 / pitch) - surface.height
    ambient = camera["ambient"] * surface.albedo / math.pi * np.clip(1.0 - cavity / 40.0, 0.35, 1.0)
    s2 = surface.roughness**2
    a, b = 1.0 - 0.5 * s2 / (s2 + 0.33), 0.45 * s2 / (s2 + 0.09)
    normalised = (surface.shininess + 8.0) / (8.0 * math.pi)
    out = []
    for azimuth in config.azimuths_deg:
        az, el = math.radians(azimuth), math.radians(config.elevation_deg)
        lx, ly, lz = math.cos(az) * math.cos(el), -math.sin(az) * math.cos(el), math.sin(el)
        ci = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
        # Oren-Nayar with the viewer overhead: cos(phi_i - phi_r) sin(alpha) tan(beta) = (Lz - ci nz) / max(ci, nz)
        diffuse = surface.albedo / math.pi * ci * (a + b * np.maximum(lz - ci * nz, 0.0) / np.maximum(ci, nz))
        hx, hy, hz = np.array([lx, ly, lz + 1.0]) / math.hypot(lx, ly, lz + 1.0)  # half-way to the camera
        nh = np.maximum(nx * hx + ny * hy + nz * hz, 0.0)
        specular = surface.gloss * normalised * np.power(nh, surface.shininess) * (ci > 0)
        shadow = _visibility(surface.height, pitch, azimuth, config.elevation_deg, camera["penumbra_deg"])
        out.append((shadow * (diffuse + specular) + ambient).astype(np.float32))
    return out


# Camera: exposure set on bare powder, vignette and fall-off toward each light, shot and read noise, tone curve.


def _camera(rng: np.random.Generator, config: SecondRendererConfig) -> dict:
    srgb = bool(rng.random() < 0.5)
    return {
        "exposure_level": float(rng.uniform(*config.exposure)), "tone": "srgb" if srgb else "power",
        "gamma": 2.4 if srgb else float(rng.uniform(1.8, 2.4)),
        "light_intensity": [float(v) for v in rng.uniform(0.85, 1.15, 3)],
        "vignette": float(rng.uniform(0.05, 0.2)), "falloff": float(rng.uniform(0.05, 0.2)),
        "ambient": float(rng.uniform(0.05, 0.15)), "penumbra_deg": float(rng.uniform(0.5, 2.0)),
        "photons_full_scale": float(rng.uniform(2000, 8000)), "read_noise": float(rng.uniform(0.002, 0.006)),
        "blur_sigma_px": float(rng.uniform(0.3, 0.8)) if rng.random() < 0.5 else 0.0,
    }  # fmt: skip


def _tone(linear: np.ndarray, camera: dict) -> np.ndarray:
    if camera["tone"] == "srgb":
        return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return np.power(linear, 1.0 / camera["gamma"])


def _untone(level: float, camera: dict) -> float:
    if camera["tone"] == "srgb":
        return level / 12.92 if level <= 0.04045 else ((level + 0.055) / 1.055) ** 2.4
    return level ** camera["gamma"]


def _expose(radiance: np.ndarray, k: int, gain: float, config: SecondRendererConfig, camera: dict,
            rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """One light's radiance -> output codes in 0..1 (float)."""
    linear = _area(radiance, config.oversample) * (gain * camera["light_intensity"][k])
    u = (np.arange(config.size, dtype=np.float32) + 0.5) / config.size * 2 - 1  # -1 at the left/top edge
    azimuth = math.radians(config.azimuths_deg[k])
    toward = u[None, :] * math.cos(azimuth) - u[:, None] * math.sin(azimuth)  # +1 on the side nearest the light
    linear *= (1 - camera["vignette"] * (u[None, :] ** 2 + u[:, None] ** 2) / 2) * (1 + camera["falloff"] * toward)
    if camera["blur_sigma_px"]:
        linear = cv2.GaussianBlur(linear, (0, 0), camera["blur_sigma_px"])
    spread = np.sqrt(np.maximum(linear, 0) / camera["photons_full_scale"] + camera["read_noise"] ** 2)
    linear = linear + spread * rng.standard_normal(linear.shape, dtype=np.float32)
    return _tone(np.clip(linear, 0.0, 1.0), camera)


def render_layer(config: SecondRendererConfig, seed: int, index: int) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """Three images (light k = azimuth k), the class map (0 = none, class i has id i + 1) and the layer's record."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    s, size = config.oversample, config.size
    n, pitch = size * s, config.pitch_um / s
    coords = (np.arange(n, dtype=np.float32) + 0.5) * pitch
    x, y = coords[None, :], coords[:, None]
    surface, values = _powder(_rng(seed, index, "powder"), n, pitch)
    c = slice((n - min(n, 192)) // 2, (n + min(n, 192)) // 2)  # bare powder, kept to set the exposure
    bare = _Surface(*(np.ascontiguousarray(getattr(surface, f.name)[c, c]) for f in dataclasses.fields(_Surface)))
    distances, part_values = _parts(_rng(seed, index, "parts"), surface, config, pitch, x, y)
    parts = [_area(d, s) < 0 for d in distances]  # (size, size) each
    melted = np.logical_or.reduce(parts) if parts else np.zeros((size, size), bool)
    layer = {"field": size * config.pitch_um, "pitch": pitch, "pitch_out": config.pitch_um, "s": s, "size": size,
             "x": x, "y": y, "parts": parts, "melted": melted, "part_albedo": part_values["part_albedo"],
             "powder_albedo": values["powder_albedo"]}  # fmt: skip
    found = []
    if _rng(seed, index, "clean").random() >= config.clean_fraction:
        rng = _rng(seed, index, "defects")
        for _ in range(rng.integers(config.defects[0], config.defects[1] + 1)):
            name = config.classes[rng.integers(len(config.classes))]
            result = DEFECTS[name](rng, surface, layer)
            if result is not None and result[2].size and result[2].max() > 0:
                found.append((name, *result))
    truth, defects = np.zeros((size, size), np.uint8), []
    for name, rows, cols, profile, params in found:
        coarse = _area(profile.astype(np.float32), s)
        footprint = np.zeros((size, size), bool)
        footprint[rows.start // s : rows.stop // s, cols.start // s : cols.stop // s] = coarse >= 0.5 * coarse.max()
        ys, xs = np.nonzero(footprint)
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        defects.append({"class": name, "class_id": CLASSES.index(name) + 1, "bbox": box, "area_px": len(xs),
                        "params": params, "footprint": footprint})  # fmt: skip
    for defect in sorted(defects, key=lambda d: -d["area_px"]):  # small ones on top: every defect stays in the map
        truth[defect.pop("footprint")] = defect["class_id"]

    camera = _camera(_rng(seed, index, "camera"), config)
    level = float(np.mean([r[16:-16, 16:-16].mean() for r in _shade(bare, pitch, config, camera)]))
    gain = _untone(camera["exposure_level"], camera) / level
    codes = [_expose(r, k, gain, config, camera, _rng(seed, index, f"noise{k}"))
             for k, r in enumerate(_shade(surface, pitch, config, camera))]  # fmt: skip
    full = (1 << config.bit_depth) - 1
    images = [np.round(c * full).astype(np.uint8 if config.bit_depth == 8 else np.uint16) for c in codes]
    powder = ~melted & (truth == 0)
    brightness = None
    if (melted & (truth == 0)).any() and powder.any():
        brightness = float(np.mean([c[melted & (truth == 0)].mean() / c[powder].mean() for c in codes]))
    meta = {
        "layer_id": f"layer_{index:05d}", "seed": seed, "index": index, "renderer": "second", "size": size,
        "pitch_um": config.pitch_um, "bit_depth": config.bit_depth,
        "lights": [{"azimuth_deg": a, "elevation_deg": config.elevation_deg} for a in config.azimuths_deg],
        "clean": not defects, "defects": defects,
        "appearance": {**values, **part_values, **camera, "exposure_gain": gain,
                       "part_to_powder_brightness": brightness},
    }  # fmt: skip
    return images, truth, meta


# Files: the layout `prepare` reads, each file written atomically.


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.dtype} image of shape {image.shape} as PNG")
    return encoded.tobytes()


def _write_layer(config: SecondRendererConfig, out: Path, seed: int, index: int) -> dict:
    images, truth, meta = render_layer(config, seed, index)
    lid = meta["layer_id"]
    for k, image in enumerate(images):
        _write_atomic(out / "raw" / f"{lid}_a{k}.png", _png(image))
    _write_atomic(out / "truth" / f"{lid}.png", _png(truth))
    _write_atomic(out / "meta" / f"{lid}.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def render_set(config: SecondRendererConfig, out: Path, layers: int, seed: int, start: int = 0, command: str = "",
               workers: int = 1) -> dict:  # fmt: skip
    """Render layers start .. start + layers - 1 into out/raw, truth, meta and render_config.json; a summary."""
    if layers < 1 or seed < 0 or start < 0 or workers < 1:
        raise ValueError(f"need layers >= 1, seed >= 0, start >= 0, workers >= 1; got layers={layers}, seed={seed}, "
                         f"start={start}, workers={workers}")  # fmt: skip
    out = Path(out)
    for folder in ("raw", "truth", "meta"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    job, indices = partial(_write_layer, config, out, seed), range(start, start + layers)
    summary = {"layers": 0, "clean_layers": 0, "instances": dict.fromkeys(CLASSES, 0)}
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for meta in pool.map(job, indices) if pool else map(job, indices):
            summary["layers"] += 1
            summary["clean_layers"] += meta["clean"]
            for defect in meta["defects"]:
                summary["instances"][defect["class"]] += 1
            if summary["layers"] % max(1, layers // 10) == 0 or summary["layers"] == layers:
                log.info("second renderer: %d/%d layers", summary["layers"], layers)
    record = {"renderer": "second", "config": dataclasses.asdict(config), "seed": seed, "start": start,
              "layers": layers, "command": command, "summary": summary}  # fmt: skip
    _write_atomic(out / "render_config.json", (json.dumps(record, indent=2) + "\n").encode())
    return summary
