"""Randomised physics: the ranges each synthetic layer draws its own render settings from, and the draw.

A model trained on layers that all share one light elevation, one camera and one powder learns the look of the
generator rather than the look of defects. With `SynthConfig.randomize` on, every layer draws its lights, camera
and materials from `PhysicsRanges`, with a random generator of its own (a child of the layer's seed): a layer stays
a pure function of (config, seed, index), and with randomize off it renders exactly as before randomisation existed.

Standard library only, so that the command line can show the default ranges without loading the renderer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol, TypeVar

Range = tuple[float, float]
T = TypeVar("T")


@dataclass(frozen=True)
class Limit:
    """Physically sensible values of one setting: low..high, low excluded when `open_low`."""

    low: float
    high: float = math.inf
    open_low: bool = False
    unit: str = ""

    def holds(self, value: float) -> bool:
        return (value > self.low if self.open_low else value >= self.low) and value <= self.high

    def __str__(self) -> str:
        """As in "must be {limit}": within [5, 85] degrees, above 0 micrometres, at least 1 electrons."""
        if math.isinf(self.high):
            text = f"{'above' if self.open_low else 'at least'} {self.low:g}"
        else:
            text = f"within {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        return f"{text} {self.unit}".rstrip()


@dataclass(frozen=True)
class PhysicsRanges:
    """The (low, high) range each randomised layer draws a setting from; low == high fixes that setting.

    | field | default | unit | what it sets (per light: one value for each of the three lights) |
    |---|---|---|---|
    | elevation_deg | 15-60 | degrees | light elevation above the bed, one for the three lights of a layer |
    | elevation_jitter_deg | -2-2 | degrees | per light: added to the layer's elevation (lights are not mounted alike) |
    | azimuth_error_deg | -3-3 | degrees | per light: added to the nominal azimuth; channel order stays the config's |
    | light_intensity | 0.75-1.25 | relative | per light: radiance scale against the exposure reference |
    | powder_albedo | 0.25-0.7 | | diffuse reflectance of the powder |
    | particle_diameter_um | 20-60 | micrometres | powder grain scale (roughness and albedo texture) |
    | powder_roughness_um | 1.5-10 | micrometres | height deviation of the powder at particle scale |
    | powder_particles | 0-1 | share | how much of that texture is packed grains (caps and gaps), not a smooth field |
    | melted_albedo | 0.25-0.9 | | diffuse reflectance of parts melted in this layer (darker or brighter than powder) |
    | melted_specular | 0.05-0.8 | | specular strength of parts |
    | melted_shininess | 8-80 (log-uniform) | | Blinn-Phong exponent of parts |
    | hatch_spacing_um | 60-140 | micrometres | distance between scan tracks |
    | scan_track_um | 1-4 | micrometres | amplitude of the scan-track ripples |
    | response_gamma | 0.6-1.5 | | response curve s -> s**gamma on the normalised signal, before quantisation |
    | target_level | 0.2-0.75 | full scale | where flat, matte powder lit at intensity 1 lands (after gamma) |
    | full_well_e | 5000-40000 (log-uniform) | electrons | full-scale signal: sets the shot noise |
    | read_noise_e | 2-20 | electrons | Gaussian read noise |
    | blur_px | 0-1.2 | output pixels | Gaussian optical blur (sigma) |
    | vignetting | 0-0.4 | relative | fall-off at the corners (replaces CameraConfig.vignetting) |
    | illumination_gradient | 0-0.25 | relative | per light: brighter towards the light (replaces CameraConfig's) |
    | pitch_um | 15-40 | micrometres | bed distance per camera pixel (defect sizes are in micrometres) |

    Values are uniform within their range, except the log-uniform ones. Vignetting and the illumination gradient are
    drawn where CameraConfig's ranges are drawn (the layer's own stream); the others by `draw`. A layer whose drawn
    level would saturate more than its glints is exposed lower (`camera.auto_exposure`, recorded as exposure_cut).
    """

    elevation_deg: Range = (15.0, 60.0)
    elevation_jitter_deg: Range = (-2.0, 2.0)
    azimuth_error_deg: Range = (-3.0, 3.0)
    light_intensity: Range = (0.75, 1.25)
    powder_albedo: Range = (0.25, 0.7)
    particle_diameter_um: Range = (20.0, 60.0)
    powder_roughness_um: Range = (1.5, 10.0)
    powder_particles: Range = (0.0, 1.0)
    melted_albedo: Range = (0.25, 0.9)
    melted_specular: Range = (0.05, 0.8)
    melted_shininess: Range = (8.0, 80.0)
    hatch_spacing_um: Range = (60.0, 140.0)
    scan_track_um: Range = (1.0, 4.0)
    response_gamma: Range = (0.6, 1.5)
    target_level: Range = (0.2, 0.75)
    full_well_e: Range = (5000.0, 40000.0)
    read_noise_e: Range = (2.0, 20.0)
    blur_px: Range = (0.0, 1.2)
    vignetting: Range = (0.0, 0.4)
    illumination_gradient: Range = (0.0, 0.25)
    pitch_um: Range = (15.0, 40.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_range(f.name, getattr(self, f.name))


LIMITS: dict[str, Limit] = {
    "elevation_deg": Limit(5.0, 85.0, unit="degrees above the bed"),
    "elevation_jitter_deg": Limit(-10.0, 10.0, unit="degrees"),
    "azimuth_error_deg": Limit(-30.0, 30.0, unit="degrees"),
    "light_intensity": Limit(0.0, 10.0, open_low=True),
    "target_level": Limit(0.0, 1.0, open_low=True, unit="of full scale"),
    "response_gamma": Limit(0.1, 10.0),
    "full_well_e": Limit(1.0, unit="electrons"),
    "read_noise_e": Limit(0.0, unit="electrons"),
    "blur_px": Limit(0.0, 10.0, unit="output pixels"),
    "vignetting": Limit(0.0, 0.9),
    "illumination_gradient": Limit(0.0, 0.7),  # 1 + g * toward stays positive in the corners (|toward| <= sqrt 2)
    "powder_albedo": Limit(0.0, 1.0, open_low=True),
    "particle_diameter_um": Limit(0.0, open_low=True, unit="micrometres"),
    "powder_roughness_um": Limit(0.0, unit="micrometres"),
    "powder_particles": Limit(0.0, 1.0, unit="share of the powder texture"),
    "melted_albedo": Limit(0.0, 1.0, open_low=True),
    "melted_specular": Limit(0.0),
    "melted_shininess": Limit(1.0),
    "hatch_spacing_um": Limit(0.0, open_low=True, unit="micrometres"),
    "scan_track_um": Limit(0.0, unit="micrometres"),
    "pitch_um": Limit(0.0, open_low=True, unit="micrometres per pixel"),
}
LOG_UNIFORM = frozenset({"full_well_e", "melted_shininess"})
PER_LIGHT = ("elevation_jitter_deg", "azimuth_error_deg", "light_intensity", "illumination_gradient")
CAMERA_FIELDS = ("response_gamma", "target_level", "full_well_e", "read_noise_e", "blur_px")
SURFACE_FIELDS = (
    "powder_albedo",
    "particle_diameter_um",
    "powder_roughness_um",
    "powder_particles",
    "melted_albedo",
    "melted_specular",
    "melted_shininess",
    "hatch_spacing_um",
    "scan_track_um",
)
DRAWN_BY_CAMERA = ("vignetting", "illumination_gradient")  # drawn from the layer's own stream, as CameraConfig's


def check_range(name: str, value: Range, label: str = "", shown: str = "") -> Range:
    """`value` as a (low, high) range of setting `name`; ValueError unless low <= high, both within its limits.

    `label` names the value in the message (default "physics range NAME"), `shown` is how it was given (default
    its repr): the command line passes its option and text.
    """
    label, shown = label or f"physics range {name}", shown or repr(value)
    if len(value) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in value):
        raise ValueError(f"{label} must be two finite numbers (low, high), got {shown}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise ValueError(f"{label} must be a range with low <= high, got {shown}")
    limit = LIMITS[name]
    if not (limit.holds(low) and limit.holds(high)):
        raise ValueError(f"{label} must be {limit}, got {shown}")
    return (low, high)


def parse_range(text: str, option: str, name: str) -> Range:
    """Parse a command-line value of setting `name`: one number (low == high, which fixes it) or LOW:HIGH."""
    default = getattr(PhysicsRanges(), name)
    parts = text.split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(parts) not in (1, 2) or len(values) != len(parts) or not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"{option} takes one number (fixes it) or a range LOW:HIGH such as {default[0]:g}:{default[1]:g} "
            f"({LIMITS[name].unit}), got {text!r}"
        )
    return check_range(name, (values[0], values[-1]), option, repr(text))


class Generator(Protocol):  # numpy.random.Generator, without importing numpy here
    def uniform(self, low: float, high: float) -> float: ...


@dataclass(frozen=True)
class LayerPhysics:
    """The render settings of one layer, one value per PhysicsRanges field but the two that the camera draws;
    per-light fields hold one value per light, in channel order."""

    elevation_deg: float
    elevation_jitter_deg: tuple[float, ...]
    azimuth_error_deg: tuple[float, ...]
    light_intensity: tuple[float, ...]
    powder_albedo: float
    particle_diameter_um: float
    powder_roughness_um: float
    melted_albedo: float
    melted_specular: float
    melted_shininess: float
    hatch_spacing_um: float
    scan_track_um: float
    response_gamma: float
    target_level: float
    full_well_e: float
    read_noise_e: float
    blur_px: float
    pitch_um: float
    powder_particles: float = 0.0  # drawn last, so the fields above keep the values a seed gave before it existed

    @classmethod
    def fixed(
        cls, elevation_deg: float, pitch_um: float, n_lights: int, surface: object, camera: object
    ) -> LayerPhysics:
        """The settings of a layer with randomize off: the SurfaceConfig's and CameraConfig's own values, lights
        of intensity 1 exactly at their nominal places."""
        return cls(
            elevation_deg=elevation_deg,
            elevation_jitter_deg=(0.0,) * n_lights,
            azimuth_error_deg=(0.0,) * n_lights,
            light_intensity=(1.0,) * n_lights,
            pitch_um=pitch_um,
            **{name: getattr(camera, name) for name in CAMERA_FIELDS},
            **{name: getattr(surface, name) for name in SURFACE_FIELDS},
        )

    def surface_config(self, base: T) -> T:
        """`base` (a SurfaceConfig) with this layer's powder and part settings."""
        return dataclasses.replace(base, **{name: getattr(self, name) for name in SURFACE_FIELDS})

    def camera_config(self, base: T, ranges: PhysicsRanges | None = None) -> T:
        """`base` (a CameraConfig) with this layer's exposure, noise, response and blur; given `ranges` (randomize
        on), with their vignetting and illumination-gradient ranges, which the layer's own stream draws from."""
        values = {name: getattr(self, name) for name in CAMERA_FIELDS}
        if ranges is not None:
            values.update({name: getattr(ranges, name) for name in DRAWN_BY_CAMERA})
        return dataclasses.replace(base, **values)

    def light_placements(self, azimuths_deg: tuple[float, ...]) -> list[tuple[float, float, float]]:
        """(azimuth, elevation, intensity) of each light: nominal azimuth plus its error, the layer's elevation
        plus the light's jitter (kept within the elevation limits)."""
        limit = LIMITS["elevation_deg"]
        return [
            ((azimuth + error) % 360.0, min(max(self.elevation_deg + jitter, limit.low), limit.high), intensity)
            for azimuth, error, jitter, intensity in zip(
                azimuths_deg, self.azimuth_error_deg, self.elevation_jitter_deg, self.light_intensity, strict=True
            )
        ]

    def to_json(self) -> dict:
        """The values rounded for a layer's metadata (per-light ones as lists)."""
        return {f.name: _rounded(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _rounded(value: float | tuple[float, ...]) -> float | list[float]:
    return [round(float(v), 4) for v in value] if isinstance(value, tuple) else round(float(value), 4)


def _draw_one(rng: Generator, name: str, value: Range) -> float:
    low, high = value
    if name in LOG_UNIFORM:
        return math.exp(float(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


def draw(rng: Generator, ranges: PhysicsRanges, n_lights: int) -> LayerPhysics:
    """One layer's settings drawn from `ranges`, field by field in the order of LayerPhysics."""
    values: dict = {}
    for f in dataclasses.fields(LayerPhysics):
        value = getattr(ranges, f.name)
        if f.name in PER_LIGHT:
            values[f.name] = tuple(_draw_one(rng, f.name, value) for _ in range(n_lights))
        else:
            values[f.name] = _draw_one(rng, f.name, value)
    return LayerPhysics(**values)
