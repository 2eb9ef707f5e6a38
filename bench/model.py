"""The `bench` command: latency of every inference variant side by side, in one run on the same inputs.

Rows: float eager; float channels_last; float traced and frozen (TorchScript); dynamic int8; static int8 (FX);
static int8 traced and frozen; ONNX Runtime float and static int8 (QDQ), the peer a user would pick instead.
Warm-up first, then the median and p90 of the repeats. Also model file sizes, one full layer through tiled
inference, and the served path of one tile-sized layer with the class head beside a binary head (`served_heads`).
Ratios are what to quote: absolute times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handler.settings import ServingConfig
from training.inference import serialize
from training.inference.classes import DEFECT_CLASSES
from training.inference.config import Decision, ModelConfig
from training.inference.familiarity import assess
from training.inference.images import write_json
from training.inference.loaders import ChannelsLast
from training.inference.model import build_model, load_checkpoint, state_digest
from training.inference.postprocess import Prediction, detect
from training.inference.quantization import QuantizationConfig, freeze, load_int8, quantize_dynamic, quantize_static
from training.inference.tiling import predict_tiled
from training.learning.dataset import load_split
from training.learning.quantize import calibration_inputs
from training.learning.validation import VALIDATION_THRESHOLD
from training.serving.timing import measure, measure_alternating

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    """What `bench model` measured, written as its --json (these fields, in this order); training/reports/benchmarks.py
    renders it."""

    command: str
    checkpoint: str
    cpu: dict[str, Any]  # `cpu_description()`
    rows: list[dict[str, Any]]  # variant, size, batch, threads and `measure`'s median_ms, p90_ms, runs
    sizes_bytes: dict[str, int]  # model file -> bytes
    tiled_layer: dict[str, Any]  # size, tile, threads, and ms per variant of one full layer
    gmac_512: float  # convolution GMAC of one 512 x 512 frame
    heads: list[dict[str, Any]] = field(default_factory=list)  # `served_heads` rows; [] before them

    def to_dict(self) -> dict[str, Any]:
        return serialize.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Benchmark:
        """Rebuild from the --json of an earlier run, e.g. to render its report again."""
        return serialize.from_dict(cls, data, what="bench JSON key")


def conv_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of the convolutions for one size x size frame."""
    total = 0

    def hook(module: torch.nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(hook) for m in convolutions]
    with torch.inference_mode():
        model(torch.zeros(1, convolutions[0].in_channels, size, size))  # the first convolution takes the input
    for handle in handles:
        handle.remove()
    return total


def cpu_description() -> dict[str, Any]:
    """What this CPU is and an estimate of its int8 multiply-accumulate peak (from /proc/cpuinfo)."""
    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        lines = {k.strip(): v.strip() for k, v in lines.items()}
        info["model"] = lines.get("model name", "unknown")
        flags = set(lines.get("flags", "").split())
        info["avx512_vnni"] = "avx512_vnni" in flags
        info["amx_int8"] = "amx_int8" in flags
        mhz = float(lines.get("cpu MHz", "0") or 0)
        info["mhz"] = mhz
        if info["avx512_vnni"] and mhz:
            # VPDPBUSD: 64 int8 multiply-accumulates per 512-bit instruction, two FMA ports per core.
            info["vnni_peak_gmacs"] = round(2 * 64 * mhz / 1e3 * (os.cpu_count() or 1), 1)
        if "avx512f" in flags and mhz:
            # VFMADD on 512-bit registers: 16 fp32 multiply-accumulates per instruction, two FMA ports per core.
            info["fp32_peak_gmacs"] = round(2 * 16 * mhz / 1e3 * (os.cpu_count() or 1), 1)
    return info


def _onnx_models(model: torch.nn.Module, calibration: list[torch.Tensor], folder: Path) -> tuple[Path, Path]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, prepared, int8 = folder / "model_fp32.onnx", folder / "model_pre.onnx", folder / "model_int8.onnx"
    axes = {"input": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(model, (calibration[0],), str(fp32), dynamo=False, input_names=["input"], output_names=["logits"], dynamic_axes=axes, opset_version=17)  # fmt: skip
    quant_pre_process(str(fp32), str(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x.numpy()} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    ort_static(str(prepared), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
    return fp32, int8


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _int8_model(checkpoint: Path, model: torch.nn.Module, records: list, config: ModelConfig, count: int):
    """The int8 model `quantize` made from this very checkpoint (model_int8.pt beside it), or a fresh one; the
    calibration inputs used, so that ONNX Runtime is calibrated on the same layers; and the settings."""
    saved = Path(checkpoint).parent / "model_int8.pt"
    if saved.exists():
        payload = torch.load(saved, weights_only=True)
        int8_config = ModelConfig.from_dict(payload["model_config"])
        if int8_config.quantization.get("source_digest") == state_digest(model.state_dict()):
            images = int8_config.quantization["calibration"]["images"]
            calibration = calibration_inputs(records, config, images)
            log.info("using %s (calibrated on %d layers; ONNX Runtime gets the same layers)", saved, images)
            settings = QuantizationConfig.from_dict(int8_config.quantization["settings"])
            return load_int8(int8_config, payload["state_dict"]), calibration, settings
        log.warning("%s was made from other weights than %s: quantizing afresh", saved, checkpoint)
    calibration = calibration_inputs(records, config, count)
    log.info("quantizing with default settings on %d calibration layers", len(calibration))
    settings = QuantizationConfig(calibration_images=count)
    return quantize_static(model, calibration, settings), calibration, settings


def bench(
    checkpoint: Path,
    sizes: list[int],
    batches: list[int],
    threads: list[int],
    repeat: int = 20,
    max_seconds: float = 8.0,
    layer_size: int = 2048,
    calibration: int = 8,
    command: str = "",
) -> Benchmark:
    config, model, _ = load_checkpoint(checkpoint)
    records = load_split(Path(config.training.get("data", "")), "train", "heuristic")
    int8, calib, settings = _int8_model(checkpoint, model, records, config, calibration)
    dynamic = quantize_dynamic(model)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    onnx_fp32, onnx_int8 = _onnx_models(model, calib, work)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "f.pt")
        torch.save(int8.state_dict(), Path(tmp) / "q.pt")
        sizes_bytes = {
            "fp32 state dict": (Path(tmp) / "f.pt").stat().st_size,
            "int8 state dict": (Path(tmp) / "q.pt").stat().st_size,
            "ONNX fp32": onnx_fp32.stat().st_size,
            "ONNX int8 (QDQ)": onnx_int8.stat().st_size,
        }
    rows = []
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    for size in sizes:
        for batch in batches:
            x = torch.randn(batch, config.in_channels, size, size, generator=generator)  # the same for every row
            x_cl = x.contiguous(memory_format=torch.channels_last)
            frozen_fp32 = freeze(model, x)
            frozen_int8 = freeze(int8, x)
            variants: dict[str, Callable[[], Any]] = {
                "fp32 eager": partial(model, x),
                "fp32 channels_last": partial(model_cl, x_cl),
                "fp32 TorchScript frozen": partial(frozen_fp32, x),
                "dynamic int8 (prototype)": partial(dynamic, x),
                "static int8 FX": partial(int8, x),
                "static int8 FX frozen": partial(frozen_int8, x),
            }
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                feed = {"input": x.numpy()}
                runs = {
                    **variants,
                    "ONNX Runtime fp32": partial(_ort_session(onnx_fp32, n_threads).run, None, feed),
                    "ONNX Runtime int8 (QDQ)": partial(_ort_session(onnx_int8, n_threads).run, None, feed),
                }
                for name, run in runs.items():
                    with torch.inference_mode():
                        timing = measure(run, repeat, max_seconds)
                    rows.append({"variant": name, "size": size, "batch": batch, "threads": n_threads, **timing})
                    log.info(
                        "%-26s %4d px  batch %d  %d threads: %8.1f ms (p90 %.1f)",
                        name,
                        size,
                        batch,
                        n_threads,
                        timing["median_ms"],
                        timing["p90_ms"],
                    )

    torch.set_num_threads(max(threads))
    layer = np.random.default_rng(0).integers(0, 255, (layer_size, layer_size, 3), dtype=np.uint8)
    example = torch.zeros(1, config.in_channels, config.tile_size, config.tile_size)
    tiled = {}
    for name, net in (("fp32 eager", model), ("static int8 FX frozen", freeze(int8, example))):
        t0 = time.perf_counter()
        predict_tiled(net, layer, config)
        tiled[name] = (time.perf_counter() - t0) * 1e3
    macs = conv_macs(model, 512)
    tiled_layer = {"size": layer_size, "tile": config.tile_size, "threads": max(threads), "ms": tiled}
    try:
        threshold = Decision.read(checkpoint, state_digest(model.state_dict())).threshold
    except FileNotFoundError:  # not evaluated yet: the threshold training validated at
        threshold = VALIDATION_THRESHOLD
    heads = served_heads(config, model, records[0].stack, calib, settings, threshold, repeat, max_seconds)
    return Benchmark(command, str(checkpoint), cpu_description(), rows, sizes_bytes, tiled_layer, macs / 1e9, heads)


def head_configs(config: ModelConfig) -> dict[str, ModelConfig]:
    """The checkpoint's network with the six-class head and with a binary head (one of them is its own)."""
    return {"class": config.replace(class_names=DEFECT_CLASSES), "binary": config.replace(class_names=())}


def _with_head(model: torch.nn.Module, config: ModelConfig) -> torch.nn.Module:
    """A network for `config` holding `model`'s weights wherever the shapes agree (all but a changed head)."""
    net = build_model(config)
    own = net.state_dict()
    net.load_state_dict({k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape},
                        strict=False)  # fmt: skip
    return net.eval()


def served_heads(
    config: ModelConfig,
    model: torch.nn.Module,
    stack: np.ndarray,
    calibration: list[torch.Tensor],
    settings: QuantizationConfig,
    threshold: float,
    repeat: int,
    max_seconds: float,
) -> list[dict[str, Any]]:
    """What classes cost where it counts, the served path of one layer of the serving tile size: the network with
    the class head beside the same network with a binary head, as each variant serves it (float32 channels_last,
    int8 static and frozen with the int8 variant's settings), then `detect` at `threshold` and the familiarity
    check. Both heads' `detect` reads the same defect probability (the checkpoint's), the class head's also its
    class shares, so they describe the same regions and the difference is the head's; that is why this times the
    handler's steps one by one rather than the handler. The two heads run in turn, repeat after repeat, so a
    shared machine slows both alike."""
    side = config.tile_size
    stack = np.ascontiguousarray(stack[:side, :side])
    serving = ServingConfig()
    configs = head_configs(config)
    nets = {head: _with_head(model, cfg) for head, cfg in configs.items()}
    reference = predict_tiled(model, stack, config).defect
    own = predict_tiled(nets["class"], stack, configs["class"])
    shares = own.classes / np.maximum(own.defect, np.float32(1e-6))
    predictions = {
        "class": Prediction(reference, (shares * reference).astype(np.float32), configs["class"].class_names),
        "binary": Prediction(reference),
    }
    example = calibration[0][..., :side, :side]
    served = {
        "fp32 channels_last": {head: ChannelsLast(net) for head, net in nets.items()},
        "static int8 FX frozen": {
            head: freeze(quantize_static(net, calibration, settings), example) for head, net in nets.items()
        },
    }

    def path(head: str, net: torch.nn.Module) -> None:
        predict_tiled(net, stack, configs[head], serving.tile_overlap, serving.tile_batch)
        detection = detect(predictions[head], threshold, True, serving.max_components)
        assess(stack, configs[head], detection.flagged_px / reference.size)

    rows = []
    for variant, heads in served.items():
        timings = measure_alternating({head: partial(path, head, net) for head, net in heads.items()}, repeat,
                                      max_seconds)  # fmt: skip
        for head, timing in timings.items():
            rows.append({"variant": variant, "head": head, "size": side, "threads": torch.get_num_threads(), **timing})
            log.info("served path %-22s %-6s head %4d px: %8.1f ms (p90 %.1f)", variant, head, side,
                     timing["median_ms"], timing["p90_ms"])  # fmt: skip
    return rows


def save_json(result: Benchmark, path: Path) -> None:
    write_json(path, result.to_dict())
