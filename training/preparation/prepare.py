"""From a raw folder to a training set: filter triplets, stack them, make heuristic labels, split, report.

Output layout (`OUT/`): `images/<id>.png` (3-channel, lossless, channel k = light k, bit depth kept),
`masks/<id>.png` (heuristic label, 0/255), `truth/<id>.png` (exact class map, when truth is given),
`manifest.csv`, `dropped.csv` (every dropped layer or file with its reason) and `prepare_report.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.inference.config import DEFAULT_AZIMUTHS_DEG, check_pitch
from training.inference.images import ImageError, encode_png, read_png_array, write_atomic, write_csv, write_json
from training.preparation import label_quality
from training.preparation.labels import LabelConfig, check_vote, light_votes, vote
from training.preparation.triplets import REASONS, Dropped, QualityLimits, Triplet, group_files, load_triplet
from training.reports import label_quality as label_quality_report
from training.workers import progress_map

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = (
    "layer_id",
    "split",
    "height",
    "width",
    "bit_depth",
    "label_source",
    "defect_fraction",
    "truth_fraction",
    "image",
    "mask",
    "truth",
    "converted_from_colour",
    "pitch_um",
)


@dataclass(frozen=True)
class PrepareConfig:
    vote: str = "majority"
    labels: LabelConfig = field(default_factory=LabelConfig)
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    limits: QualityLimits = field(default_factory=QualityLimits)
    azimuths_deg: tuple[float, float, float] | None = (
        None  # light k's azimuth; None: from synth_config.json or DEFAULT_AZIMUTHS_DEG
    )
    pitch_um: float | None = None  # micrometres per pixel of every layer; None: each layer's meta JSON, else unknown

    def __post_init__(self) -> None:
        check_vote(self.vote)
        if self.pitch_um is not None:
            check_pitch(self.pitch_um, "pitch")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError(
                f"split must be three non-negative fractions (train, val, test) summing to 1, got {self.split}"
            )


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(f"split must look like 0.7,0.15,0.15, got {text!r}") from err
    if len(values) != 3:
        raise ValueError(f"split needs three fractions (train, val, test), got {text!r}")
    return values  # type: ignore[return-value]


def split_of(layer_id: str, fractions: tuple[float, float, float]) -> str:
    """Deterministic split by layer id: a hash, so adding layers never moves existing ones between splits."""
    u = int(hashlib.sha256(layer_id.encode()).hexdigest()[:12], 16) / float(1 << 48)  # uniform in [0, 1)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def read_truth(truth_dir: str | None, layer_id: str, shape: tuple[int, int]) -> np.ndarray | Dropped | None:
    """The layer's truth map (H, W) uint8 (0 = no defect; 1..C = class, or any nonzero value for a plain mask), a
    Dropped saying why it cannot be used, or None when there is no truth for the layer."""
    if truth_dir is None:
        return None
    path = Path(truth_dir) / f"{layer_id}.png"
    if not path.exists():
        return None

    def bad(detail: str) -> Dropped:
        return Dropped(layer_id, "truth_mismatch", f"truth {path.name}: {detail}", (path.name,))

    try:
        truth = read_png_array(path)
    except (ImageError, OSError) as err:
        return bad(str(err))
    if truth.ndim != 2:
        return bad(f"has {truth.shape[2]} channels; a truth map has one (class ids, or 0 / nonzero)")
    if truth.shape != shape:
        return bad(f"is {truth.shape[0]}x{truth.shape[1]}, the images are {shape[0]}x{shape[1]}")
    if int(truth.max()) > 255:
        return bad(f"holds values up to {int(truth.max())}; class ids must fit in 0..255")
    return truth.astype(np.uint8)


def _check(job: tuple[Triplet, QualityLimits, str | None]) -> Dropped | tuple[str, str]:
    """First pass: can the layer be used (images and truth)? Returns its pixel digest to find duplicates."""
    triplet, limits, truth_dir = job
    loaded = load_triplet(triplet, limits)
    if isinstance(loaded, Dropped):
        return loaded
    truth = read_truth(truth_dir, loaded.layer_id, loaded.stack.shape[:2])
    return truth if isinstance(truth, Dropped) else (loaded.layer_id, loaded.digest)


def _process(job: tuple[Triplet, PrepareConfig, str, str | None]) -> dict:
    """Stack, label and write one layer; return its manifest row and its label-quality statistics."""
    triplet, config, out_dir, truth_dir = job
    out = Path(out_dir)
    pitch = config.pitch_um if config.pitch_um is not None else recorded_pitch(triplet)
    loaded = load_triplet(triplet, config.limits)
    if isinstance(loaded, Dropped):  # the files changed since the first pass
        return {"row": None, "stats": None, "dropped": loaded}
    truth = read_truth(truth_dir, triplet.layer_id, loaded.stack.shape[:2])
    if isinstance(truth, Dropped):
        return {"row": None, "stats": None, "dropped": truth}
    stack = loaded.stack
    votes = light_votes(stack, config.labels)  # (H, W) 0..3
    label = vote(votes, config.vote)
    lid = loaded.layer_id
    row = {
        "layer_id": lid,
        "split": split_of(lid, config.split),
        "height": stack.shape[0],
        "width": stack.shape[1],
        "bit_depth": 8 if stack.dtype == np.uint8 else 16,
        "label_source": f"heuristic:{config.vote}",
        "defect_fraction": round(float(label.mean()), 6),
        "truth_fraction": "",
        "image": f"images/{lid}.png",
        "mask": f"masks/{lid}.png",
        "truth": "",
        "converted_from_colour": int(loaded.converted_from_colour),
        "pitch_um": "" if pitch is None else round(pitch, 6),
    }
    result: dict = {"row": row, "stats": None, "dropped": None}
    write_atomic(out / row["image"], encode_png(stack))
    write_atomic(out / row["mask"], encode_png(label.astype(np.uint8) * 255))
    if truth is not None:
        write_atomic(out / "truth" / f"{lid}.png", encode_png(truth))
        row["truth"] = f"truth/{lid}.png"
        row["truth_fraction"] = round(float((truth > 0).mean()), 6)
        result["stats"] = label_quality.layer_stats(votes, truth)
    return result


def recorded_pitch(triplet: Triplet) -> float | None:
    """The layer's pitch from the meta JSON `synth` writes beside its raw folder (`../meta/<layer_id>.json`), or
    None when there is none (real data: `prepare --pitch` states it)."""
    meta = triplet.paths[0].parent.parent / "meta" / f"{triplet.layer_id}.json"
    if not meta.exists():
        return None
    value = json.loads(meta.read_text()).get("pitch_um")
    return None if value is None else check_pitch(value, f"pitch_um in {meta}")


def _recorded_azimuths(raw: Path) -> tuple[float, float, float]:
    record = raw.parent / "synth_config.json"
    if record.exists():
        azimuths = tuple(json.loads(record.read_text())["config"]["azimuths_deg"])
        log.info("light azimuths %s taken from %s", azimuths, record)
        return azimuths  # type: ignore[return-value]
    log.info("light azimuths not given (--lights): assuming %s degrees for images a0, a1, a2", DEFAULT_AZIMUTHS_DEG)
    return DEFAULT_AZIMUTHS_DEG


def prepare(
    raw: Path,
    out: Path,
    config: PrepareConfig = PrepareConfig(),
    truth_dir: Path | None = None,
    report_dir: Path | None = Path("docs"),
    workers: int | None = None,
    command: str = "",
) -> dict:
    """Filter, stack, label and split a raw folder; returns the report it also writes to OUT."""
    raw, out = Path(raw), Path(out)
    if truth_dir is not None and not Path(truth_dir).is_dir():
        raise FileNotFoundError(f"truth folder {truth_dir} does not exist or is not a folder")
    azimuths = config.azimuths_deg or _recorded_azimuths(raw)
    triplets, dropped = group_files(raw)
    log.info("found %d complete triplets in %s", len(triplets), raw)

    first_seen: dict[str, str] = {}
    kept: list[Triplet] = []
    truth_arg = str(truth_dir) if truth_dir is not None else None
    checks = progress_map(_check, [(t, config.limits, truth_arg) for t in triplets], workers, "check", "layer")
    for triplet, checked in zip(triplets, checks, strict=True):
        if isinstance(checked, Dropped):
            dropped.append(checked)
        elif checked[1] in first_seen:
            detail = f"same pixels as {first_seen[checked[1]]}"
            files = tuple(p.name for p in triplet.paths)
            dropped.append(Dropped(triplet.layer_id, "duplicate_layer", detail, files))
        else:
            first_seen[checked[1]] = triplet.layer_id
            kept.append(triplet)

    jobs = [(t, config, str(out), truth_arg) for t in kept]
    rows, stats = [], []
    for result in progress_map(_process, jobs, workers, "prepare", "layer"):
        if result["dropped"] is not None:
            dropped.append(result["dropped"])
            continue
        rows.append(result["row"])
        if result["stats"] is not None:
            stats.append((result["row"]["layer_id"], result["stats"]))
    if truth_dir is not None:
        missing = [r["layer_id"] for r in rows if not r["truth"]]
        if missing:
            log.warning(
                "no truth for %d layer(s), e.g. %s: they are kept, labelled heuristically only",
                len(missing),
                missing[0],
            )

    reasons = Counter(d.reason for d in dropped)
    report = {
        "command": command,
        "raw": str(raw),
        "truth": truth_arg,
        "kept": len(rows),
        "dropped": len(dropped),
        "dropped_by_reason": {r: reasons[r] for r in sorted(reasons)},
        "reasons": {r: REASONS[r] for r in sorted(reasons)},
        "splits": {s: sum(r["split"] == s for r in rows) for s in SPLITS},
        "azimuths_deg": list(azimuths),
        "pitch_um": config.pitch_um if config.pitch_um is not None else "each layer's meta JSON, where there is one",
        "config": dataclasses.asdict(config),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS, rows)
    listed = {r["image"] for r in rows}
    stale = sorted(p.name for p in (out / "images").glob("*.png") if f"images/{p.name}" not in listed)
    if stale:
        log.warning(
            "%d image(s) in %s/images are from an earlier run and not in manifest.csv, e.g. %s",
            len(stale),
            out,
            stale[0],
        )
    dropped_rows = [
        {"name": d.name, "reason": d.reason, "detail": d.detail, "files": " ".join(d.files)} for d in dropped
    ]
    write_csv(out / "dropped.csv", ("name", "reason", "detail", "files"), dropped_rows)
    if stats and report_dir is not None:
        summary = label_quality.summarize(stats, chosen=config.vote)
        summary["label_config"] = dataclasses.asdict(config.labels)
        by_id = {t.layer_id: t for t in kept}
        examples = []
        for lid in label_quality.pick_examples(stats):
            loaded = load_triplet(by_id[lid], config.limits)
            truth = read_truth(truth_arg, lid, loaded.stack.shape[:2])
            examples.append(label_quality.Example(lid, loaded.stack, light_votes(loaded.stack, config.labels), truth))
        synth_record = raw.parent / "synth_config.json"  # written by `synth`: the command that made this data
        data_command = json.loads(synth_record.read_text()).get("command") if synth_record.exists() else None
        quality = label_quality.LabelQuality(summary, examples, command, data_command)
        written = label_quality_report.write_report(quality, Path(report_dir))
        numbers = out / "label_quality.json"
        write_json(numbers, summary)
        report["label_quality"] = {**written, "json": str(numbers)}
    write_json(out / "prepare_report.json", report)
    for reason, count in report["dropped_by_reason"].items():
        log.info("dropped %d: %s (%s)", count, reason, report["reasons"][reason])
    shown = 20
    for d in dropped[:shown]:
        log.info("  %s: %s (%s)", d.name, d.reason, d.detail)
    if len(dropped) > shown:
        log.info("  ... and %d more, every one in %s", len(dropped) - shown, out / "dropped.csv")
    return report
