"""The `quantize` command: every registered variant's model file for every backend, from a trained checkpoint,
with each int8 model's accuracy measured against the float model and against exact truth.

Writes into the output folder the model files of `variants.VARIANTS`: for PyTorch model_fp32.pt and model_int8.pt,
each {model_config, state_dict} readable with `torch.load(..., weights_only=True)`; for OpenVINO model_fp32.xml
(the float network converted) and model_int8.xml (NNCF's post-training quantization of it, calibrated on the same
layers as PyTorch's int8), each with its .bin. Then `quantization.json` (settings, sizes, agreement at the
threshold `evaluate` chose, read from decision.json): the `Quantization` result, which
`training.reports.quantization` renders as Markdown. The checkpoint, what training makes, stays a state dict.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.inference import openvino_backend, serialize
from training.inference.config import Decision, ModelConfig
from training.inference.images import write_json
from training.inference.loaders import load_variant, model_files
from training.inference.model import load_checkpoint, save_checkpoint, state_digest
from training.inference.openvino_backend import OpenVINOModel
from training.inference.postprocess import Prediction, class_map, defect_mask
from training.inference.quantization import (
    OBSERVERS,
    OPENVINO_RANGES,
    QuantizationConfig,
    available_engines,
    freeze,
    load_int8,
    quantize_dynamic,
    quantize_static,
)
from training.inference.tiling import model_input, predict_layers
from training.inference.variants import OPENVINO, PYTORCH, VARIANTS
from training.learning.dataset import LayerRecord, load_split
from training.learning.metrics import Counts, confusion

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Quantization:
    """What `quantize` made and measured, written as quantization.json (these fields, in this order)."""

    command: str
    checkpoint: str
    settings: QuantizationConfig  # as used: with the engine chosen by timing, when it was
    calibration_seconds: float
    split: str  # the split the agreement was measured on
    layers: int
    threshold: float  # from decision.json: agreement where the model is served
    sizes_bytes: dict[str, int]  # "fp32", "int8": bytes of each state dict
    engine_timings_ms: dict[str, dict[str, float]]  # engine -> eager_ms, frozen_ms; {} when chosen by hand
    calibration_sweep: list[dict[str, Any]]  # `calibration_sweep` rows; [] without --sweep
    static_int8: dict[str, float]  # `agreement` of each int8 model with float32
    dynamic_int8: dict[str, float]
    openvino_int8: dict[str, float]
    files: dict[str, dict[str, str]]  # variant key -> backend -> model file

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quantization:
        """Rebuild from quantization.json, e.g. to render its report again."""
        return serialize.from_dict(cls, data, what="quantization.json key")


def calibration_inputs(
    records: list[LayerRecord], config: ModelConfig, count: int, seed: int = 0
) -> list[torch.Tensor]:
    """`count` training layers (a seeded choice), as model inputs."""
    if not records:
        raise ValueError("no training layers to calibrate on")
    order = np.random.default_rng(seed).permutation(len(records))[:count]
    return [model_input(records[i].stack, config)[0] for i in order]


def agreement(
    reference: list[Prediction], candidate: list[Prediction], records: list[LayerRecord], threshold: float
) -> dict[str, Any]:
    """How far int8 decisions follow float32: mask IoU between the two, per-layer defect / no-defect agreement,
    each one's pixel F1 against exact truth (when there is truth) and, from a class model, the IoU of each class's
    mask (the class maps' pixels of that class) between the two."""
    between, float_truth, int8_truth = Counts(), Counts(), Counts()
    names = reference[0].class_names if reference else ()
    per_class = [Counts() for _ in names]
    same_decision = 0
    has_truth = all(r.truth is not None for r in records)
    for a, b, record in zip(reference, candidate, records, strict=True):
        fa, fb = defect_mask(a.defect, threshold), defect_mask(b.defect, threshold)
        between = between + confusion(fb, fa)
        same_decision += bool(fa.any()) == bool(fb.any())
        if names:
            ca, cb = class_map(fa, a.classes), class_map(fb, b.classes)
            per_class = [c + confusion(cb == k + 1, ca == k + 1) for k, c in enumerate(per_class)]
        if has_truth:
            float_truth = float_truth + confusion(fa, record.truth > 0)
            int8_truth = int8_truth + confusion(fb, record.truth > 0)
    result = {
        "mask_iou": between.iou(),
        "decision_agreement": same_decision / len(records),
        "max_probability_difference": float(
            max(np.abs(a.defect - b.defect).max() for a, b in zip(reference, candidate, strict=True))
        ),
    }
    if names:  # None where neither variant marks the class
        result["class_iou"] = {
            n: c.iou() if c.tp + c.fp + c.fn else None for n, c in zip(names, per_class, strict=True)
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


def _files_size(path: Path) -> int:
    """Bytes of a model file and of the files it needs beside it."""
    return sum(part.stat().st_size for part in model_files(path))


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
    threshold: float,
) -> list[dict[str, Any]]:
    """Agreement of int8 with float32 on the validation split: PyTorch's static int8 for each observer and
    calibration count, OpenVINO's for each way of setting activation ranges at the calibration count of `settings`;
    the measurement behind the --calibration, --observer and --openvino-ranges defaults."""
    float_predictions = predict_layers(model, [r.stack for r in val_records], config)
    trials = [(PYTORCH, observer, count) for observer in OBSERVERS for count in counts]
    trials += [(OPENVINO, ranges, settings.calibration_images) for ranges in OPENVINO_RANGES]
    rows = []
    for backend, method, count in trials:
        calibration = calibration_inputs(train_records, config, count)
        started = time.perf_counter()
        if backend == PYTORCH:
            int8 = quantize_static(model, calibration, dataclasses.replace(settings, observer=method))
        else:
            trial = dataclasses.replace(settings, openvino_ranges=method)
            int8 = OpenVINOModel(openvino_backend.quantize(openvino_backend.convert(model, config), calibration, trial),
                                 torch.get_num_threads())  # fmt: skip
        seconds = time.perf_counter() - started
        int8_predictions = predict_layers(int8, [r.stack for r in val_records], config)
        row = {"backend": backend, "observer": method, "images": count, "calibration_seconds": round(seconds, 1)}
        rows.append({**row, **agreement(float_predictions, int8_predictions, val_records, threshold)})
        log.info("sweep: %s %s, %d images: mask IoU %.4f", backend, method, count, rows[-1]["mask_iou"])
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
) -> Quantization:
    """Make the float32 and int8 artifacts of a checkpoint and measure the int8 model's agreement. With
    `choose_engine`, the quantized engine and whether to freeze are picked by timing each on this machine."""
    config, model, _ = load_checkpoint(checkpoint)
    threshold = Decision.read(checkpoint, state_digest(model.state_dict())).threshold  # agreement where it is served
    out_dir = Path(out_dir or Path(checkpoint).parent)
    data_dir = Path(data_dir or config.training.get("data", ""))
    train_records = load_split(data_dir, "train", "heuristic")
    started = time.perf_counter()
    sweep_rows = []
    if sweep:
        val_records = load_split(data_dir, "val", "heuristic")
        sweep_rows = calibration_sweep(model, config, train_records, val_records, sweep, settings, threshold)
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
    files = {v.key: {b.backend: out_dir / b.file for b in v.builds} for v in VARIANTS}
    save_checkpoint(files["fp32"][PYTORCH], config, model.state_dict())
    save_checkpoint(files["int8"][PYTORCH], int8_config, int8.state_dict())
    reloaded = load_int8(int8_config, torch.load(files["int8"][PYTORCH], weights_only=True)["state_dict"])
    probe = calibration[0]
    with torch.no_grad():
        if not torch.equal(reloaded(probe), int8(probe)):
            raise RuntimeError("the reloaded int8 model differs from the converted one: refusing to keep it")

    started = time.perf_counter()
    converted = openvino_backend.convert(model, config)
    digest = int8_config.quantization["source_digest"]
    openvino_backend.save(converted, config.replace(backend=OPENVINO), files["fp32"][OPENVINO], digest)
    openvino_int8 = openvino_backend.quantize(converted, calibration, settings)
    openvino_config = config.replace(
        backend=OPENVINO,
        quantization={
            "settings": settings.to_dict(),  # the calibration count and float modules; engine and observer are torch's
            "tool": f"nncf {openvino_backend.nncf_version()}",
            "calibration": int8_config.quantization["calibration"],
            "source_digest": digest,
        },
    )
    openvino_backend.save(openvino_int8, openvino_config, files["int8"][OPENVINO], digest)
    log.info("OpenVINO float32 and int8 (NNCF) written in %.1f s", time.perf_counter() - started)

    records = load_split(data_dir, split, "heuristic")
    float_predictions = predict_layers(model, [r.stack for r in records], config)
    result = Quantization(
        command=command,
        checkpoint=str(checkpoint),
        settings=settings,
        calibration_seconds=round(seconds, 1),
        split=split,
        layers=len(records),
        threshold=threshold,
        sizes_bytes={
            "fp32": _size(model.state_dict()),
            "int8": _size(int8.state_dict()),
            **{f"{OPENVINO} {key}": _files_size(files[key][OPENVINO]) for key in ("fp32", "int8")},
        },
        engine_timings_ms=engines,
        calibration_sweep=sweep_rows,
        static_int8=agreement(
            float_predictions, predict_layers(int8, [r.stack for r in records], config), records, threshold
        ),
        dynamic_int8=agreement(
            float_predictions,
            predict_layers(quantize_dynamic(model), [r.stack for r in records], config),
            records,
            threshold,
        ),
        openvino_int8=agreement(
            float_predictions,
            predict_layers(load_variant(files["int8"][OPENVINO])[1], [r.stack for r in records], config),
            records,
            threshold,
        ),
        files={key: {backend: str(path) for backend, path in paths.items()} for key, paths in files.items()},
    )
    write_json(out_dir / "quantization.json", result.to_dict())
    return result
