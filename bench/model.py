"""The `bench` command: latency of every inference variant side by side, in one run on the same inputs.

Rows: float eager; float channels_last; float traced and frozen (TorchScript); dynamic int8; static int8 (FX);
static int8 traced and frozen; OpenVINO float and int8 (NNCF post-training quantization on the same calibration
layers), the other served backend; ONNX Runtime float and static int8 (QDQ); and the prototype's network (smp's
default decoder) on OpenVINO, float and int8, the fastest way to run the network we grew from. Warm-up first, then
the median and p90 of the repeats; each row's multiply-accumulates per second beside this machine's peaks, measured
by a matrix-product microbenchmark (`measured_peaks`). Each model's agreement with float32 and F1 against exact
truth on the test layers (`accuracy`). Also model file sizes, one full layer through tiled inference, and the
served path of one tile-sized layer with the class head beside a binary head (`served_heads`). Ratios are what to
quote: absolute times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import contextlib
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
from training.inference import openvino_backend, serialize
from training.inference.classes import DEFECT_CLASSES
from training.inference.config import SMP_DECODER, Decision, ModelConfig
from training.inference.familiarity import assess
from training.inference.images import write_json
from training.inference.loaders import ChannelsLast, model_files
from training.inference.model import build_model, load_checkpoint, state_digest
from training.inference.openvino_backend import OpenVINOModel
from training.inference.postprocess import Prediction, detect
from training.inference.quantization import QuantizationConfig, freeze, load_int8, quantize_dynamic, quantize_static
from training.inference.tiling import padded, predict_layers, predict_tiled
from training.inference.variants import OPENVINO
from training.inference.variants import variant as registered
from training.learning.dataset import load_split
from training.learning.quantize import agreement, calibration_inputs
from training.learning.validation import VALIDATION_THRESHOLD
from training.reports.benchmarks import BUILD_ROWS, INT8_ROWS, PROTOTYPE_ROWS
from training.serving.timing import measure, measure_alternating

log = logging.getLogger(__name__)

LAYER_REPEAT = 5  # timed runs of the full layer through tiled inference, after two untimed
# `seams`: what tiles change, measured with tiles smaller than the layer (the served default runs 2048 whole)
SEAM_OVERLAPS = (64, 128, 256)
SEAM_MOSAICS = 3


@dataclass(frozen=True)
class Benchmark:
    """What `bench model` measured, written as its --json (these fields, in this order); training/reports/benchmarks.py
    renders it."""

    command: str
    checkpoint: str
    cpu: dict[str, Any]  # `cpu_description()`
    rows: list[dict[str, Any]]  # variant, size, batch, threads, precision, gmac and `measure`'s median_ms, p90_ms, runs
    sizes_bytes: dict[str, int]  # model file -> bytes
    tiled_layer: dict[str, Any]  # size, tile, overlap, threads, per model `measure` of one full layer, `seams`
    gmac_512: float  # convolution GMAC of one 512 x 512 frame
    heads: list[dict[str, Any]] = field(default_factory=list)  # `served_heads` rows; [] before them
    peaks: dict[str, dict[str, float]] = field(default_factory=dict)  # `measured_peaks`; {} before them
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)  # `accuracy`; {} before it

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
    """What this CPU is (from /proc/cpuinfo) and the versions of the runtimes measured; its peaks are measured
    (`measured_peaks`), not derived from the clock."""
    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    for package in ("onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            info[package] = __import__(package).__version__
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        lines = {k.strip(): v.strip() for k, v in lines.items()}
        info["model"] = lines.get("model name", "unknown")
        flags = set(lines.get("flags", "").split())
        info["avx512_vnni"] = "avx512_vnni" in flags
        info["amx_int8"] = "amx_int8" in flags
        info["mhz"] = float(lines.get("cpu MHz", "0") or 0)
    return info


def measured_peaks(threads: list[int], side: int = 2048, repeat: int = 5) -> dict[str, dict[str, float]]:
    """Multiply-accumulates per second (GMAC/s) this machine reaches in one large matrix product (side x side), per
    thread count, the best of `repeat` runs and of two libraries' kernels: float32 through torch.mm (oneMKL) and an
    OpenVINO MatMul (oneDNN), int8 through a quantized Linear on fbgemm and an OpenVINO MatMul between
    fake-quantized operands (u8 x i8, VNNI where the CPU has it). Convolutions reach a share of these; the
    clock-derived figures of a data sheet are upper bounds no kernel meets."""
    import torch.ao.nn.quantized as nnq

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(side, side, generator=generator), torch.randn(side, side, generator=generator)
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else engine
    linear = nnq.Linear(side, side)
    weight = torch.quantize_per_tensor(torch.randn(side, side, generator=generator), 0.05, 0, torch.qint8)
    linear.set_weight_bias(weight, None)
    x = torch.quantize_per_tensor(torch.rand(side, side, generator=generator), 0.01, 0, torch.quint8)
    macs = side**3 / 1e9
    peaks: dict[str, dict[str, float]] = {"fp32": {}, "int8": {}}
    previous = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            runs = {
                "fp32": [partial(torch.mm, a, b), _openvino_matmul(side, n, int8=False)],
                "int8": [partial(linear, x), _openvino_matmul(side, n, int8=True)],
            }
            for precision, kernels in runs.items():
                best = float("inf")
                for run in kernels:
                    run()
                    best = min(best, *(_seconds(run) for _ in range(repeat)))
                peaks[precision][str(n)] = round(macs / best, 1)
    finally:
        torch.set_num_threads(previous)
        torch.backends.quantized.engine = engine
    log.info("measured peaks (GMAC/s): %s", peaks)
    return peaks


def _openvino_matmul(side: int, threads: int, int8: bool) -> Callable[[], Any]:
    """One side x side matrix product compiled by OpenVINO for the CPU; with `int8`, both operands fake-quantized
    (activations u8 on 0..1, weights i8 on -4..4), which the CPU plugin runs as an int8 product."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    activations = ops.parameter([side, side], np.float32)
    weights = ops.constant(rng.standard_normal((side, side)).astype(np.float32))
    left, right = activations, weights
    if int8:

        def fake_quantize(node: Any, low: float, high: float, levels: int) -> Any:
            bounds = [ops.constant(np.float32(v)) for v in (low, high, low, high)]
            return ops.fake_quantize(node, *bounds, levels)

        left, right = fake_quantize(activations, 0.0, 1.0, 256), fake_quantize(weights, -4.0, 4.0, 255)
    model = ov.Model([ops.matmul(left, right, False, False)], [activations])
    request = OpenVINOModel(model, threads).request
    data = rng.random((side, side), dtype=np.float32)
    return partial(request.infer, data, share_inputs=True)


def _best(*measured: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per precision and thread count, the highest of several `measured_peaks`."""
    return {p: {t: max(m[p][t] for m in measured) for t in measured[0][p]} for p in measured[0]}


def _seconds(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


class OnnxModel(torch.nn.Module):
    """An ONNX Runtime session behind torch's module interface, for tiled inference."""

    def __init__(self, path: Path, threads: int) -> None:
        super().__init__()
        self.session = _ort_session(path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])


def _openvino_models(
    checkpoint: Path, model: torch.nn.Module, config: ModelConfig, calibration: list[torch.Tensor],
    settings: QuantizationConfig,
) -> tuple[Any, Any]:  # fmt: skip
    """The OpenVINO float and int8 models `quantize` wrote beside this very checkpoint, or fresh ones (int8 by NNCF on
    the same calibration layers as the PyTorch int8)."""
    folder, digest = Path(checkpoint).parent, state_digest(model.state_dict())
    files = [folder / registered(key).build(OPENVINO).file for key in ("fp32", "int8")]
    if all(f.exists() for f in files):
        read = [openvino_backend.read(f)[1] for f in files]
        if all(openvino_backend.source_digest(m) == digest for m in read):
            log.info("using %s and %s", *files)
            return read[0], read[1]
        log.warning("%s were made from other weights than %s: converting afresh", files, checkpoint)
    converted = openvino_backend.convert(model, config)  # NNCF leaves it as it is
    return converted, openvino_backend.quantize(converted, calibration, settings)


def _prototype_network(
    prototype: Path | None, config: ModelConfig, calibration: list[torch.Tensor], settings: QuantizationConfig
) -> tuple[ModelConfig, torch.nn.Module, Any, Any]:
    """The prototype's network (smp's default decoder) with our input and head: a trained checkpoint of it when
    given, else untrained weights (latency does not depend on them, accuracy then is not measured); its OpenVINO
    float and NNCF int8 models."""
    if prototype is not None:
        proto_config, net, _ = load_checkpoint(prototype)
        if proto_config.decoder_channels != SMP_DECODER:
            raise ValueError(
                f"{prototype} has decoder {proto_config.decoder_channels}, not smp's default {SMP_DECODER}"
            )
    else:
        proto_config = config.replace(decoder_channels=SMP_DECODER)
        net = build_model(proto_config).eval()
    converted = openvino_backend.convert(net, proto_config)
    return proto_config, net, converted, openvino_backend.quantize(converted, calibration, settings)


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


OPENVINO_FP32, OPENVINO_INT8 = BUILD_ROWS["fp32"][OPENVINO], BUILD_ROWS["int8"][OPENVINO]
PROTOTYPE_FP32, PROTOTYPE_INT8 = PROTOTYPE_ROWS["fp32"], PROTOTYPE_ROWS["int8"]


def _threshold(checkpoint: Path, model: torch.nn.Module) -> float:
    try:
        return Decision.read(checkpoint, state_digest(model.state_dict())).threshold
    except FileNotFoundError:  # not evaluated yet: the threshold training validated at
        return VALIDATION_THRESHOLD


def accuracy(
    reference: torch.nn.Module, models: dict[str, torch.nn.Module], config: ModelConfig, records: list,
    threshold: float,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each model's `agreement` with `reference` (its float32) on `records` at `threshold`: mask IoU, decision
    agreement and, with truth, F1 against it ("f1_float" is the reference's, "f1_int8" the model's)."""
    stacks = [r.stack for r in records]
    float_predictions = predict_layers(reference, stacks, config)
    return {name: agreement(float_predictions, predict_layers(net, stacks, config), records, threshold)
            for name, net in models.items()}  # fmt: skip


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
    prototype: Path | None = None,
) -> Benchmark:
    config, model, _ = load_checkpoint(checkpoint)
    data = Path(config.training.get("data", ""))
    records = load_split(data, "train", "heuristic")
    int8, calib, settings = _int8_model(checkpoint, model, records, config, calibration)
    ov_fp32, ov_int8 = _openvino_models(checkpoint, model, config, calib, settings)
    proto_config, proto, proto_fp32, proto_int8 = _prototype_network(prototype, config, calib, settings)
    dynamic = quantize_dynamic(model)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    onnx_fp32, onnx_int8 = _onnx_models(model, calib, work)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "f.pt")
        torch.save(int8.state_dict(), Path(tmp) / "q.pt")
        for name, ov_model in (("f", ov_fp32), ("q", ov_int8)):
            openvino_backend.save(ov_model, config, Path(tmp) / f"{name}.xml", "")
        ir = {name: sum(p.stat().st_size for p in model_files(Path(tmp) / f"{name}.xml")) for name in ("f", "q")}
        sizes_bytes = {
            "fp32 state dict": (Path(tmp) / "f.pt").stat().st_size,
            "int8 state dict": (Path(tmp) / "q.pt").stat().st_size,
            "OpenVINO fp32 IR": ir["f"],
            "OpenVINO int8 IR": ir["q"],
            "ONNX fp32": onnx_fp32.stat().st_size,
            "ONNX int8 (QDQ)": onnx_int8.stat().st_size,
        }
    peaks_before = measured_peaks(threads)
    gmac = {size: conv_macs(model, size) / 1e9 for size in sizes}
    proto_gmac = {size: conv_macs(proto, size) / 1e9 for size in sizes}
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
                    OPENVINO_FP32: partial(OpenVINOModel(ov_fp32, n_threads), x),
                    OPENVINO_INT8: partial(OpenVINOModel(ov_int8, n_threads), x),
                    "ONNX Runtime fp32": partial(_ort_session(onnx_fp32, n_threads).run, None, feed),
                    "ONNX Runtime int8 (QDQ)": partial(_ort_session(onnx_int8, n_threads).run, None, feed),
                    PROTOTYPE_FP32: partial(OpenVINOModel(proto_fp32, n_threads), x),
                    PROTOTYPE_INT8: partial(OpenVINOModel(proto_int8, n_threads), x),
                }
                for name, run in runs.items():
                    with torch.inference_mode():
                        timing = measure(run, repeat, max_seconds)
                    network = proto_gmac if name in (PROTOTYPE_FP32, PROTOTYPE_INT8) else gmac
                    rows.append({"variant": name, "size": size, "batch": batch, "threads": n_threads,
                                 "precision": "int8" if name in INT8_ROWS else "fp32",
                                 "gmac": round(network[size] * batch, 3), **timing})  # fmt: skip
                    log.info("%-40s %4d px  batch %d  %d threads: %8.1f ms (p90 %.1f)", name, size, batch, n_threads,
                             timing["median_ms"], timing["p90_ms"])  # fmt: skip

    torch.set_num_threads(max(threads))
    layer = np.random.default_rng(0).integers(0, 255, (layer_size, layer_size, 3), dtype=np.uint8)
    example = torch.zeros(1, config.in_channels, 2 * config.size_multiple, 2 * config.size_multiple)  # to trace
    serving = ServingConfig()
    tiled = {}
    for name, net in (
        ("fp32 eager", model),
        ("static int8 FX frozen", freeze(int8, example)),
        (OPENVINO_FP32, OpenVINOModel(ov_fp32, max(threads))),
        (OPENVINO_INT8, OpenVINOModel(ov_int8, max(threads))),
    ):
        tiled[name] = measure(lambda net=net: predict_tiled(net, layer, config, serving.tile_size, serving.tile_overlap),
                              LAYER_REPEAT, 3 * max_seconds)  # fmt: skip
    threshold = _threshold(checkpoint, model)
    test = load_split(data, "test", "heuristic")
    tiled_layer = {"size": layer_size, "tile": serving.tile_size, "overlap": serving.tile_overlap,
                   "threads": max(threads), "ms": tiled,
                   "seams": seams(OpenVINOModel(ov_int8, max(threads)), config, [r.stack for r in test], threshold)}  # fmt: skip
    agreements = accuracy(model, {
        "fp32 channels_last": ChannelsLast(copy.deepcopy(model)),
        "static int8 FX frozen": freeze(int8, example),
        "dynamic int8 (prototype)": dynamic,
        OPENVINO_FP32: OpenVINOModel(ov_fp32, max(threads)),
        OPENVINO_INT8: OpenVINOModel(ov_int8, max(threads)),
        "ONNX Runtime fp32": OnnxModel(onnx_fp32, max(threads)),
        "ONNX Runtime int8 (QDQ)": OnnxModel(onnx_int8, max(threads)),
    }, config, test, threshold)  # fmt: skip
    if prototype is not None:  # a trained prototype network: its own float32 is its reference, at its threshold
        agreements.update(accuracy(proto, {PROTOTYPE_INT8: OpenVINOModel(proto_int8, max(threads))}, proto_config,
                                   test, _threshold(prototype, proto)))  # fmt: skip
    peaks = _best(peaks_before, measured_peaks(threads))  # before and after the rows: the less disturbed of the two
    heads = served_heads(config, model, records[0].stack, calib, settings, threshold, repeat, max_seconds)
    return Benchmark(command, str(checkpoint), cpu_description(), rows, sizes_bytes, tiled_layer,
                     conv_macs(model, 512) / 1e9, heads, peaks, agreements)  # fmt: skip


def seams(
    model: torch.nn.Module, config: ModelConfig, stacks: list[np.ndarray], threshold: float,
    overlaps: tuple[int, ...] = SEAM_OVERLAPS, mosaics: int = SEAM_MOSAICS,
) -> dict[str, Any]:  # fmt: skip
    """How far tiles move a large layer's decisions from the whole layer's: layers of 4 x 4 test layers, each
    through 2 x 2 tiles (each answering for 2 x 2 test layers) with each overlap smaller than a tile, and through
    the model whole; the share of pixels decided differently at `threshold`, over all the mosaics."""
    side = min(min(s.shape[:2]) for s in stacks) // config.size_multiple * config.size_multiple
    tile = 2 * side
    overlaps = tuple(o for o in overlaps if o < tile)
    changed = dict.fromkeys(overlaps, 0)
    pixels = 0
    for m in range(mosaics):
        layers = [stacks[(16 * m + k) % len(stacks)][:side, :side] for k in range(16)]
        mosaic = np.concatenate([np.concatenate(layers[row * 4 : row * 4 + 4], axis=1) for row in range(4)])
        whole = predict_tiled(model, mosaic, config, padded(max(mosaic.shape[:2]), config.size_multiple), overlap=0)
        decided = whole.defect >= np.float32(threshold)
        pixels += decided.size
        for overlap in overlaps:
            tiled = predict_tiled(model, mosaic, config, tile, overlap).defect >= np.float32(threshold)
            changed[overlap] += int(np.count_nonzero(tiled != decided))
    return {"layer": 4 * side, "tile": tile, "mosaics": mosaics,
            "changed_share": {str(o): changed[o] / pixels for o in overlaps}}  # fmt: skip


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
    """What classes cost where it counts, the served path of one layer of the side serving expects (`ServingConfig.layer_side`): the network with
    the class head beside the same network with a binary head, as each variant serves it (float32 channels_last,
    int8 static and frozen with the int8 variant's settings), then `detect` at `threshold` and the familiarity
    check. Both heads' `detect` reads the same defect probability (the checkpoint's), the class head's also its
    class shares, so they describe the same regions and the difference is the head's; that is why this times the
    handler's steps one by one rather than the handler. The two heads run in turn, repeat after repeat, so a
    shared machine slows both alike."""
    serving = ServingConfig()
    side = serving.layer_side
    stack = np.ascontiguousarray(stack[:side, :side])
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
        predict_tiled(net, stack, configs[head], serving.tile_size, serving.tile_overlap)
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
