"""Synthetic layers: a height field with parts and defects, rendered under three lights, with exact truth.

One layer is a pure function of (config, seed, layer index): the same inputs give the same bytes, whatever the
number of workers. With `randomize` on (the default), each layer draws its lights, camera, materials and pixel
pitch from `config.physics` (see physics.py). Files are written in the raw layout that real machines give, plus
truth and metadata: `raw/<id>_a{0,1,2}.png`, `truth/<id>.png` (0 = no defect, 1..C = class), `meta/<id>.json`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.inference import serialize
from training.inference.classes import CLASS_IDS, DEFECT_CLASSES
from training.inference.config import DEFAULT_AZIMUTHS_DEG
from training.inference.images import encode_png, write_atomic, write_json
from training.renderer import camera, defects, lighting, physics
from training.renderer.camera import CameraConfig
from training.renderer.defects import DEFAULT_SPECS, DefectSpec, LayerContext
from training.renderer.physics import LayerPhysics, PhysicsRanges
from training.renderer.surface import (
    SurfaceConfig,
    hatch_angle,
    layer_surface,
    random_parts,
    rasterize_parts,
)
from training.workers import progress_map, resolve_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    """What `synth` renders. With `randomize` on, each layer draws pitch, elevation and the settings named in
    PhysicsRanges from `physics`, and pitch_um, elevation_deg and those fields of `surface` and `camera` are not
    used; the azimuths stay the nominal ones (channel order). With it off, every layer uses the fixed fields."""

    size: int = 512
    pitch_um: float = 25.0
    supersample: int = 2
    azimuths_deg: tuple[float, ...] = DEFAULT_AZIMUTHS_DEG
    elevation_deg: float = 30.0
    clean_fraction: float = 0.2
    surface: SurfaceConfig = field(default_factory=SurfaceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    defects: dict[str, DefectSpec] = field(default_factory=lambda: dict(DEFAULT_SPECS))
    randomize: bool = True
    physics: PhysicsRanges = field(default_factory=PhysicsRanges)

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"layer size must be at least 32 pixels, got {self.size}")
        if not 1 <= self.supersample <= 4:
            raise ValueError(f"supersample must be 1..4, got {self.supersample}")
        if self.pitch_um <= 0:
            raise ValueError(f"pixel pitch must be positive (micrometres), got {self.pitch_um}")
        if not 0.0 <= self.clean_fraction <= 1.0:
            raise ValueError(f"clean fraction must be within 0..1, got {self.clean_fraction}")
        lighting.parse_azimuths(self.azimuths_deg)
        lighting.check_elevation(self.elevation_deg)
        unknown = set(self.defects) - set(DEFECT_CLASSES)
        if unknown:
            raise ValueError(f"unknown defect class(es) {sorted(unknown)}; choose from: {', '.join(DEFECT_CLASSES)}")
        if self.clean_fraction < 1.0 and not any(s.probability > 0 for s in self.defects.values()):
            raise ValueError("no defect class has a positive probability, but clean_fraction < 1")

    def to_json(self) -> dict:
        return serialize.to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> SynthConfig:
        """Rebuild from `to_json()` output; keys left out keep their defaults, also inside one class's DefectSpec
        (`{"defects": {"pit": {"probability": 1.0}}}` changes only that), and classes left out keep theirs."""
        data = dict(data)
        if isinstance(data.get("defects"), Mapping):
            unknown = sorted(set(data["defects"]) - set(DEFAULT_SPECS))  # a misspelt class would lack every key
            if unknown:
                raise ValueError(f"unknown defect class(es) {unknown}; choose from: {', '.join(DEFAULT_SPECS)}")
            defaults = {name: serialize.to_dict(spec) for name, spec in DEFAULT_SPECS.items()}
            given = {
                name: {**defaults[name], **spec} if isinstance(spec, Mapping) else spec
                for name, spec in data["defects"].items()
            }
            data["defects"] = {**defaults, **given}
        return serialize.from_dict(cls, data, what="synth config key")

    def only_classes(self, names: tuple[str, ...]) -> SynthConfig:
        """The same configuration with every class outside `names` switched off."""
        specs = {n: (s if n in names else dataclasses.replace(s, probability=0.0)) for n, s in self.defects.items()}
        return dataclasses.replace(self, defects=specs)


@dataclass
class Layer:
    layer_id: str
    images: list[np.ndarray]  # three (H, W) uint8/uint16, image k lit from azimuth k
    truth: np.ndarray  # (H, W) uint8 class map
    meta: dict


def layer_id(index: int) -> str:
    return f"layer_{index:05d}"


def layer_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))


def physics_rng(seed: int, index: int) -> np.random.Generator:
    """A child of the layer's seed: drawing the physics does not shift the layer's own stream."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)).spawn(1)[0])


def layer_physics(config: SynthConfig, seed: int, index: int) -> LayerPhysics:
    """The render settings of one layer: drawn from config.physics with randomize on, else the fixed ones."""
    n = len(config.azimuths_deg)
    if config.randomize:
        return physics.draw(physics_rng(seed, index), config.physics, n)
    return LayerPhysics.fixed(config.elevation_deg, config.pitch_um, n, config.surface, config.camera)


def _choose_defects(rng: np.random.Generator, config: SynthConfig) -> list[str]:
    """Class names of the instances to stamp on one defective layer (at least one)."""
    active = [n for n in DEFECT_CLASSES if n in config.defects and config.defects[n].probability > 0]
    chosen: list[str] = []
    for name in active:
        spec = config.defects[name]
        if rng.random() < spec.probability:
            chosen += [name] * int(rng.integers(spec.count[0], spec.count[1] + 1))
    if not chosen:
        weights = np.array([config.defects[n].probability for n in active])
        chosen = [active[int(rng.choice(len(active), p=weights / weights.sum()))]]
    return sorted(chosen, key=defects.ORDER.index)


def generate_layer(config: SynthConfig, seed: int, index: int) -> Layer:
    """Render one layer. Pure: the result depends on (config, seed, index) only."""
    rng = layer_rng(seed, index)
    drawn = layer_physics(config, seed, index)
    surface_config = drawn.surface_config(config.surface)
    camera_config = drawn.camera_config(config.camera, config.physics if config.randomize else None)
    lights = [lighting.Light(*placement) for placement in drawn.light_placements(config.azimuths_deg)]
    scale = config.supersample
    shape = (config.size * scale, config.size * scale)
    pitch = drawn.pitch_um / scale  # render pitch
    n_parts = int(rng.integers(surface_config.parts_per_layer[0], surface_config.parts_per_layer[1] + 1))
    parts = random_parts(rng, config.size, n_parts)
    part_mask = rasterize_parts(parts, shape, scale)
    hatch_offset = float(rng.uniform(0, 180))
    hatch = hatch_angle(index, surface_config, hatch_offset)
    surface = layer_surface(rng, part_mask, pitch, hatch, surface_config)

    clean = bool(rng.random() < config.clean_fraction)
    previous_hatch = hatch_angle(index - 1, surface_config, hatch_offset)
    below_rng = np.random.default_rng(rng.integers(2**63))
    # Where powder is missing, the previous layer shows: its powder scraped flatter by the blade and heat-tinted.
    scraped = dataclasses.replace(
        surface_config,
        powder_roughness_um=0.5 * surface_config.powder_roughness_um,
        powder_albedo=0.8 * surface_config.powder_albedo,
    )
    context = LayerContext(
        shape=shape,
        pitch_um=pitch,
        scale=scale,
        parts=parts,
        part_mask=part_mask,
        previous_surface=lambda: layer_surface(below_rng, part_mask, pitch, previous_hatch, scraped),
    )
    truth = np.zeros((config.size, config.size), dtype=np.uint8)
    stamps, records = [], []
    for name in [] if clean else _choose_defects(rng, config):
        for stamp in defects.GENERATORS[name](rng, context, config.defects[name]):
            footprint = camera.bin_pixels(stamp.mask.astype(np.float32), scale) >= 0.5  # (H, W) output pixels
            if not footprint.any():
                continue  # smaller than a camera pixel: neither drawn nor labelled, so truth matches the images
            stamps.append(stamp)
            truth[footprint] = CLASS_IDS[name]
            ys, xs = np.nonzero(footprint)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            records.append(
                {
                    "class": name,
                    "class_id": CLASS_IDS[name],
                    "bbox": box,
                    "area_px": int(footprint.sum()),
                    **_rounded(stamp.info),
                }
            )
    surface = defects.compose(surface, stamps)

    normals = lighting.surface_normals(surface.height_um, pitch)
    reference = lighting.Light(0.0, drawn.elevation_deg)  # the exposure is set for flat powder under this light
    flat = lighting.flat_radiance(surface_config.powder_albedo, reference)
    radiances = [lighting.shade(surface.height_um, pitch, surface.materials, lt, normals=normals) for lt in lights]
    exposed = camera.auto_exposure(radiances, flat, camera_config) if config.randomize else flat
    exposures = camera.draw_exposures(rng, camera_config, len(lights))
    vignetting = float(rng.uniform(*camera_config.vignetting))
    images = [
        camera.capture(rng, radiance, light, exposure, vignetting, exposed, scale, camera_config)
        for radiance, light, exposure in zip(radiances, lights, exposures, strict=True)
    ]

    lid = layer_id(index)
    meta = {
        "layer_id": lid,
        "index": index,
        "seed": seed,
        "size": [config.size, config.size],
        "pitch_um": round(drawn.pitch_um, 4),
        "bit_depth": camera_config.bit_depth,
        "lights": [
            {
                "azimuth_deg": round(lt.azimuth_deg, 4),
                "elevation_deg": round(lt.elevation_deg, 4),
                "intensity": round(lt.intensity, 4),
            }
            for lt in lights
        ],
        "physics": {
            **drawn.to_json(),
            "vignetting": round(vignetting, 5),
            "illumination_gradient": [round(e.gradient, 5) for e in exposures],
        },
        "hatch_angle_deg": round(hatch, 3),
        "parts": [p.to_json() for p in parts],
        "exposures": [
            {"gain": round(e.gain, 5), "gradient": round(e.gradient, 5), "shift_px": [round(s, 4) for s in e.shift_px]}
            for e in exposures
        ],
        "vignetting": round(vignetting, 5),
        "exposure_cut": round(flat / exposed, 5),  # < 1 where auto-exposure kept the drawn level from saturating
        "clean": not records,
        "defects": records,
        "classes": {name: CLASS_IDS[name] for name in DEFECT_CLASSES},
    }
    return Layer(lid, images, truth, meta)


def _rounded(info: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()}


def write_layer(layer: Layer, out: Path) -> None:
    for k, image in enumerate(layer.images):
        write_atomic(out / "raw" / f"{layer.layer_id}_a{k}.png", encode_png(image))
    write_atomic(out / "truth" / f"{layer.layer_id}.png", encode_png(layer.truth))
    write_json(out / "meta" / f"{layer.layer_id}.json", layer.meta, sort_keys=True)


def _work(job: tuple[SynthConfig, int, int, str]) -> dict:
    config, seed, index, out = job
    layer = generate_layer(config, seed, index)
    write_layer(layer, Path(out))
    return {"clean": layer.meta["clean"], "classes": [d["class"] for d in layer.meta["defects"]]}


def synthesize(
    config: SynthConfig,
    out: Path,
    layers: int,
    seed: int = 0,
    workers: int | None = None,
    start: int = 0,
    command: str = "",
) -> dict:
    """Generate and write `layers` layers (indices start..start+layers-1) and OUT/synth_config.json, which
    records the configuration, the command and a summary; returns that record."""
    if layers < 1:
        raise ValueError(f"number of layers must be at least 1, got {layers}")
    out = Path(out)
    jobs = [(config, seed, i, str(out)) for i in range(start, start + layers)]
    counts = {name: 0 for name in DEFECT_CLASSES}
    clean = 0
    started = time.perf_counter()
    for result in progress_map(_work, jobs, workers, desc="synth", unit="layer"):
        clean += result["clean"]
        for name in result["classes"]:
            counts[name] += 1
    seconds = time.perf_counter() - started
    record = {
        "command": command,
        "seed": seed,
        "start": start,
        "layers": layers,
        "clean_layers": clean,
        "instances": counts,
        "workers": resolve_workers(workers, layers),
        "seconds": round(seconds, 3),
        "layers_per_second": round(layers / max(seconds, 1e-9), 3),
        "config": config.to_json(),
    }
    write_json(out / "synth_config.json", record)
    return record
