"""`synth` and `prepare`: the renderer and data preparation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from training.cli.common import command_line

if TYPE_CHECKING:
    from training.renderer.physics import PhysicsRanges

log = logging.getLogger("training")


def _azimuths() -> str:
    from training.inference.config import DEFAULT_AZIMUTHS_DEG

    return ",".join(f"{a:g}" for a in DEFAULT_AZIMUTHS_DEG)


def _physics_ranges() -> PhysicsRanges:
    """The default ranges, imported here so that building the parser stays light."""
    from training.renderer.physics import PhysicsRanges

    return PhysicsRanges()


def _physics(name: str) -> tuple[str, str]:
    """The default range of a PhysicsRanges field as LOW:HIGH, and the values it accepts."""
    from training.renderer.physics import LIMITS

    low, high = getattr(_physics_ranges(), name)
    return f"{low:g}:{high:g}", str(LIMITS[name])


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="render synthetic three-light layer images with exact defect truth",
        description="Render synthetic powder-bed layers: a height field with parts and defects, lit from three "
        "azimuths, with exact truth masks and per-layer metadata. Writes OUT/raw, OUT/truth, OUT/meta. By default "
        "each layer draws its own physics (light elevation, intensities, exposure, noise, blur, materials, pitch) "
        "from the ranges of SynthConfig.physics, recorded in its meta JSON under 'physics'.",
    )
    p.add_argument("--out", type=Path, default=Path("data/synth"), help="output folder (default: data/synth)")
    p.add_argument("--layers", type=int, default=100, help="number of layers (default: 100)")
    p.add_argument("--size", type=int, help="layer width = height in pixels (default: 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default: 0)")
    p.add_argument("--start", type=int, default=0, help="index of the first layer, to extend a set (default: 0)")
    p.add_argument(
        "--lights", help=f"three light azimuths in degrees, counter-clockwise from +x (default: {_azimuths()})"
    )
    p.add_argument(
        "--randomize",
        action=argparse.BooleanOptionalAction,
        help="draw each layer's physics from the configured ranges; --no-randomize renders every layer with the "
        "fixed settings (default: on, or as in --config)",
    )
    elevation, elevation_limits = _physics("elevation_deg")
    jitter = max(abs(v) for v in _physics_ranges().elevation_jitter_deg)
    pitch, pitch_limits = _physics("pitch_um")
    p.add_argument(
        "--elevation",
        metavar="DEG|LOW:HIGH",
        help=f"light elevation, {elevation_limits}: one number fixes it (randomized, each light still "
        f"jitters by up to {jitter:g} degrees), LOW:HIGH sets the range each layer draws from "
        f"(default: {elevation}; with --no-randomize, SynthConfig.elevation_deg)",
    )
    p.add_argument(
        "--pitch",
        metavar="UM|LOW:HIGH",
        help=f"pixel pitch on the bed, {pitch_limits}: one number fixes it, LOW:HIGH sets the range each "
        f"layer draws from (default: {pitch}; with --no-randomize, SynthConfig.pitch_um)",
    )
    p.add_argument("--supersample", type=int, help="render pixels per camera pixel, per axis (default: 2)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), help="bits per pixel of the PNG files (default: 8)")
    p.add_argument("--clean-fraction", type=float, help="share of layers without defects (default: 0.2)")
    p.add_argument("--classes", help="comma-separated defect classes to draw, or 'all' (default: all)")
    p.add_argument("--config", type=Path, help="JSON file with SynthConfig fields (as in OUT/synth_config.json)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace, argv: list[str]) -> str:
    from training.renderer import defects, lighting
    from training.renderer.physics import parse_range
    from training.renderer.synth import SynthConfig, synthesize

    config = SynthConfig.from_json(json.loads(args.config.read_text())) if args.config else SynthConfig()
    overrides: dict = {}
    if args.randomize is not None:
        overrides["randomize"] = args.randomize
    randomize = overrides.get("randomize", config.randomize)
    ranges: dict = {}
    for option, text, name in (("--elevation", args.elevation, "elevation_deg"), ("--pitch", args.pitch, "pitch_um")):
        if text is None:
            continue
        low, high = parse_range(text, option, name)  # the same field name in SynthConfig and PhysicsRanges
        if low == high:  # one number: the fixed value, and with randomize on a range of that one value
            overrides[name] = low
        elif not randomize:
            raise ValueError(f"{option} {text}: a range is drawn from per layer; with --no-randomize give one number")
        ranges[name] = (low, high)
    if ranges:
        overrides["physics"] = dataclasses.replace(config.physics, **ranges)
    if args.size is not None:
        overrides["size"] = args.size
    if args.lights is not None:
        overrides["azimuths_deg"] = lighting.parse_azimuths(args.lights)
    if args.supersample is not None:
        overrides["supersample"] = args.supersample
    if args.clean_fraction is not None:
        overrides["clean_fraction"] = args.clean_fraction
    if args.bit_depth is not None:
        overrides["camera"] = dataclasses.replace(config.camera, bit_depth=args.bit_depth)
    config = dataclasses.replace(config, **overrides)
    if args.classes is not None:
        config = config.only_classes(defects.parse_classes(args.classes))

    summary = synthesize(
        config,
        args.out,
        args.layers,
        seed=args.seed,
        workers=args.workers,
        start=args.start,
        command=command_line(argv),
    )
    found = ", ".join(f"{n} {c}" for n, c in summary["instances"].items() if c)
    log.info("defect instances: %s; defect-free layers: %d", found or "none", summary["clean_layers"])
    log.info(
        "%.1f layers/s (%d layers in %.1f s, %d workers)",
        summary["layers_per_second"],
        args.layers,
        summary["seconds"],
        summary["workers"],
    )
    return (
        f"wrote {args.layers} layers to {args.out}/raw (images), {args.out}/truth (class maps), "
        f"{args.out}/meta (JSON) and {args.out}/synth_config.json"
    )


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="filter raw triplets, stack them, make heuristic labels, split, report",
        description="Group RAW/<layer_id>_a<k>.<ext> files into triplets, drop unusable ones (with reasons), "
        "write stacked images, heuristic labels and manifest.csv to OUT; with --truth, also write the "
        "label-quality report.",
    )
    p.add_argument(
        "--raw", type=Path, default=Path("data/synth/raw"), help="folder of raw images (default: data/synth/raw)"
    )
    p.add_argument("--out", type=Path, default=Path("data/processed"), help="output folder (default: data/processed)")
    p.add_argument(
        "--vote",
        default="majority",
        choices=("and", "majority", "or"),
        help="how many lights must agree: 3, 2 or 1 (default: majority)",
    )
    p.add_argument("--truth", type=Path, help="folder of exact truth class maps <layer_id>.png (synthetic data)")
    p.add_argument(
        "--lights",
        help=f"azimuths of the lights of a0, a1, a2 in degrees (default: from synth_config.json, else {_azimuths()})",
    )
    p.add_argument(
        "--pitch",
        help="micrometres per pixel on the bed, for every layer (default: each layer's synth meta JSON where there is "
        "one, else unknown: answers then give no millimetres)",
    )
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions (default: 0.7,0.15,0.15)")
    p.add_argument("--threshold", type=float, help="anomaly threshold in robust standard deviations (default: 2.5)")
    p.add_argument("--background-sigma", type=float, help="background blur in pixels (default: 12)")
    p.add_argument("--min-area", type=int, help="smallest labelled component in pixels (default: 12)")
    p.add_argument("--report-dir", type=Path, default=Path("docs"), help="where label_quality.md goes (default: docs)")
    p.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    p.set_defaults(run=run_prepare)


def run_prepare(args: argparse.Namespace, argv: list[str]) -> str:
    from training.preparation.labels import LabelConfig
    from training.preparation.prepare import PrepareConfig, parse_split, prepare

    label_args = {
        "threshold": args.threshold,
        "background_sigma_px": args.background_sigma,
        "min_area_px": args.min_area,
    }
    labels = LabelConfig(**{k: v for k, v in label_args.items() if v is not None})
    from training.renderer.lighting import parse_azimuths

    azimuths = parse_azimuths(args.lights) if args.lights else None
    from training.inference.config import check_pitch

    pitch = check_pitch(args.pitch, "--pitch") if args.pitch is not None else None
    config = PrepareConfig(
        vote=args.vote, labels=labels, split=parse_split(args.split), azimuths_deg=azimuths, pitch_um=pitch
    )
    report = prepare(args.raw, args.out, config, args.truth, args.report_dir, args.workers, command_line(argv))
    splits = ", ".join(f"{n} {s}" for s, n in report["splits"].items())
    where = f"wrote {report['kept']} layers ({splits}) to {args.out} (manifest.csv, images/, masks/"
    where += ", truth/)" if args.truth else ")"
    where += f"; dropped {report['dropped']} (reasons in {args.out}/dropped.csv)"
    if "label_quality" in report:
        where += f"; label quality: {report['label_quality']['markdown']}"
    return where
