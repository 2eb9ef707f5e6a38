"""The `quantize` command: float32 and int8 state dicts from a trained checkpoint, with the int8 model's accuracy
measured against the float model and against exact truth.

Writes into the output folder: `model_fp32.pt`, `model_int8.pt` (static int8), each {model_config, state_dict}
readable with `torch.load(..., weights_only=True)`, and `quantization.json` (settings, sizes, agreement).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.inference.answer import defect_mask
from training.inference.config import ModelConfig
from training.inference.images import write_atomic, write_json
from training.inference.model import load_checkpoint, save_checkpoint, state_digest
from training.inference.quantization import (
    QuantizationConfig,
    available_engines,
    freeze,
    load_int8,
    quantize_dynamic,
    quantize_static,
)
from training.inference.tiling import model_input, predict_layers
from training.learning.dataset import LayerRecord, load_split
from training.learning.metrics import Counts, confusion

log = logging.getLogger(__name__)


def calibration_inputs(
    records: list[LayerRecord], config: ModelConfig, count: int, seed: int = 0
) -> list[torch.Tensor]:
    """`count` training layers (a seeded choice), as model inputs."""
    if not records:
        raise ValueError("no training layers to calibrate on")
    order = np.random.default_rng(seed).permutation(len(records))[:count]
    return [model_input(records[i].stack, config)[0] for i in order]


def agreement(
    reference: list[np.ndarray], candidate: list[np.ndarray], records: list[LayerRecord], threshold: float
) -> dict[str, Any]:
    """How far int8 decisions follow float32: mask IoU between the two, per-layer defect / no-defect agreement,
    and each one's pixel F1 against exact truth (when there is truth)."""
    between, float_truth, int8_truth = Counts(), Counts(), Counts()
    same_decision = 0
    has_truth = all(r.truth is not None for r in records)
    for a, b, record in zip(reference, candidate, records, strict=True):
        fa, fb = defect_mask(a, threshold), defect_mask(b, threshold)
        between = between + confusion(fb, fa)
        same_decision += bool(fa.any()) == bool(fb.any())
        if has_truth:
            float_truth = float_truth + confusion(fa, record.truth > 0)
            int8_truth = int8_truth + confusion(fb, record.truth > 0)
    result = {
        "mask_iou": between.iou(),
        "decision_agreement": same_decision / len(records),
        "max_probability_difference": float(
            max(np.abs(a - b).max() for a, b in zip(reference, candidate, strict=True))
        ),
    }
    if has_truth:
        result.update(
            {"f1_float": float_truth.f1(), "f1_int8": int8_truth.f1(), "f1_drop": float_truth.f1() - int8_truth.f1()}
        )
    return result


def _size(state_dict: dict[str, torch.Tensor]) -> int:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return len(buffer.getvalue())


def _median_ms(model: torch.nn.Module, x: torch.Tensor, runs: int = 7) -> float:
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - started) * 1e3)
    return float(np.median(times))


def measure_engines(
    model: torch.nn.Module, calibration: list[torch.Tensor], settings: QuantizationConfig
) -> dict[str, dict[str, float]]:
    """Latency of one tile through static int8 with each available engine, eager and traced-and-frozen.
    (Speed does not depend on calibration quality, so two calibration images are enough here.)"""
    example = calibration[0]
    timings = {}
    for engine in available_engines():
        int8 = quantize_static(model, calibration[:2], dataclasses.replace(settings, engine=engine))
        timings[engine] = {
            "eager_ms": _median_ms(int8, example),
            "frozen_ms": _median_ms(freeze(int8, example), example),
        }
        log.info(
            "engine %s: %.1f ms eager, %.1f ms frozen",
            engine,
            timings[engine]["eager_ms"],
            timings[engine]["frozen_ms"],
        )
    return timings


def calibration_sweep(
    model: torch.nn.Module,
    config: ModelConfig,
    train_records: list[LayerRecord],
    val_records: list[LayerRecord],
    counts: list[int],
    settings: QuantizationConfig,
) -> list[dict[str, Any]]:
    """Agreement of static int8 with float32 on the validation split for each observer and calibration count:
    the measurement behind the --calibration and --observer defaults."""
    float_probs = predict_layers(model, [r.stack for r in val_records], config)
    rows = []
    for observer in ("histogram", "minmax"):
        for count in counts:
            trial = dataclasses.replace(settings, observer=observer, calibration_images=count)
            started = time.perf_counter()
            int8 = quantize_static(model, calibration_inputs(train_records, config, count), trial)
            seconds = time.perf_counter() - started
            int8_probs = predict_layers(int8, [r.stack for r in val_records], config)
            row = {"observer": observer, "images": count, "calibration_seconds": round(seconds, 1)}
            rows.append({**row, **agreement(float_probs, int8_probs, val_records, config.threshold)})
            log.info("sweep: %s, %d images: mask IoU %.4f", observer, count, rows[-1]["mask_iou"])
    return rows


def quantize_checkpoint(
    checkpoint: Path,
    out_dir: Path | None = None,
    settings: QuantizationConfig = QuantizationConfig(),
    data_dir: Path | None = None,
    split: str = "test",
    command: str = "",
    choose_engine: bool = False,
    sweep: list[int] | None = None,
) -> dict[str, Any]:
    """Make the float32 and int8 artifacts of a checkpoint and measure the int8 model's agreement. With
    `choose_engine`, the quantized engine and whether to freeze are picked by timing each on this machine."""
    config, model, _ = load_checkpoint(checkpoint)
    out_dir = Path(out_dir or Path(checkpoint).parent)
    data_dir = Path(data_dir or config.training.get("data", ""))
    train_records = load_split(data_dir, "train", "heuristic")
    started = time.perf_counter()
    sweep_rows = []
    if sweep:
        val_records = load_split(data_dir, "val", "heuristic")
        sweep_rows = calibration_sweep(model, config, train_records, val_records, sweep, settings)
    calibration = calibration_inputs(train_records, config, settings.calibration_images)
    engines = measure_engines(model, calibration, settings) if choose_engine else {}
    if engines:
        fastest = min(engines, key=lambda e: min(engines[e].values()))
        settings = dataclasses.replace(settings, engine=fastest)
    int8 = quantize_static(model, calibration, settings)
    seconds = time.perf_counter() - started

    int8_config = config.replace(
        quantization={
            "settings": settings.to_dict(),
            "calibration": {"split": "train", "images": len(calibration)},
            "source_digest": state_digest(model.state_dict()),
            "engine_timings_ms": engines,
            # serve traced and frozen when that measured faster (or when nothing was measured: it usually is)
            "frozen": not engines or engines[settings.engine]["frozen_ms"] <= engines[settings.engine]["eager_ms"],
        }
    )
    save_checkpoint(out_dir / "model_fp32.pt", config, model.state_dict())
    save_checkpoint(out_dir / "model_int8.pt", int8_config, int8.state_dict())
    reloaded = load_int8(int8_config, torch.load(out_dir / "model_int8.pt", weights_only=True)["state_dict"])
    probe = calibration[0]
    with torch.no_grad():
        if not torch.equal(reloaded(probe), int8(probe)):
            raise RuntimeError("the reloaded int8 model differs from the converted one: refusing to keep it")

    records = load_split(data_dir, split, "heuristic")
    float_probs = predict_layers(model, [r.stack for r in records], config)
    report = {
        "command": command,
        "checkpoint": str(checkpoint),
        "settings": settings.to_dict(),
        "calibration_seconds": round(seconds, 1),
        "split": split,
        "layers": len(records),
        "threshold": config.threshold,
        "sizes_bytes": {"fp32": _size(model.state_dict()), "int8": _size(int8.state_dict())},
        "engine_timings_ms": engines,
        "calibration_sweep": sweep_rows,
        "static_int8": agreement(
            float_probs, predict_layers(int8, [r.stack for r in records], config), records, config.threshold
        ),
        "dynamic_int8": agreement(
            float_probs,
            predict_layers(quantize_dynamic(model), [r.stack for r in records], config),
            records,
            config.threshold,
        ),
        "files": {"fp32": str(out_dir / "model_fp32.pt"), "int8": str(out_dir / "model_int8.pt")},
    }
    write_json(out_dir / "quantization.json", report)
    return report


def _sweep_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    best = max(rows, key=lambda r: (round(r["mask_iou"], 4), -r["images"]))
    return [
        "## Calibration sweep (validation split)",
        "",
        "| observer | calibration layers | seconds | mask IoU with fp32 | decision agreement | F1 drop vs truth |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['observer']} | {r['images']} | {r['calibration_seconds']} | {r['mask_iou']:.4f} | "
            f"{r['decision_agreement']:.3f} | {r.get('f1_drop', float('nan')):.4f} |"
            for r in rows
        ],
        "",
        f"Highest agreement: `{best['observer']}` with {best['images']} layers (fewest layers among equals).",
        "",
    ]


def write_report(report: dict[str, Any], path: Path) -> None:
    """Markdown table of the int8 variants' agreement with float32 and their accuracy against exact truth."""

    def cell(value: float | None, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = []
    for name, key in (("static int8 (FX, calibrated)", "static_int8"), ("dynamic int8 (prototype)", "dynamic_int8")):
        a = report[key]
        rows.append(
            f"| {name} | {cell(a['mask_iou'])} | {cell(a['decision_agreement'])} | {cell(a.get('f1_float'))} | "
            f"{cell(a.get('f1_int8'))} | {cell(a.get('f1_drop'), 4)} | {cell(a['max_probability_difference'])} |"
        )
    sizes = report["sizes_bytes"]
    settings = report["settings"]
    timings = report.get("engine_timings_ms") or {}
    engine_note = (
        "the fastest measured here: "
        + ", ".join(f"{e} {t['eager_ms']:.1f} ms eager / {t['frozen_ms']:.1f} ms frozen" for e, t in timings.items())
        + " per tile"
        if timings
        else "chosen by hand"
    )
    text = "\n".join(
        [
            "# Quantization: int8 against float32",
            "",
            "Produced by `python -m training quantize`. Regenerate:",
            "",
            "```bash",
            report["command"],
            "```",
            "",
            f"Checkpoint `{report['checkpoint']}`; {report['layers']} layers of the {report['split']} split at the "
            f"model's threshold {report['threshold']:.3f}. Static int8: engine `{settings['engine']}` "
            f"({engine_note}), observer "
            f"`{settings['observer']}`, {settings['calibration_images']} calibration layers, kept in float: "
            f"{', '.join(settings['float_modules']) or 'nothing'}. Targets: mask IoU with float32 >= 0.97, F1 drop <= 0.01.",
            "",
            "| variant | mask IoU with fp32 | decision agreement | F1 fp32 vs truth | F1 int8 vs truth | F1 drop | max probability difference |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"State dicts: fp32 {sizes['fp32'] / 1e6:.2f} MB, int8 {sizes['int8'] / 1e6:.2f} MB "
            f"({sizes['fp32'] / sizes['int8']:.2f}x smaller).",
            "",
            *_sweep_lines(report.get("calibration_sweep") or []),
        ]
    )
    write_atomic(path, text.encode())
