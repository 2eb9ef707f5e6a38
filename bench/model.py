"""The `bench` command: latency of every inference variant side by side, in one run on the same inputs.

Rows: float eager; float channels_last; float traced and frozen (TorchScript); dynamic int8; static int8 (FX);
static int8 traced and frozen; ONNX Runtime float and static int8 (QDQ), the peer a user would pick instead.
Warm-up first, then the median and p90 of the repeats. Also model file sizes and one full layer through tiled
inference. Ratios are what to quote: absolute times depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.inference.config import ModelConfig
from training.inference.images import write_atomic, write_json
from training.inference.model import load_checkpoint, state_digest
from training.inference.quantization import QuantizationConfig, freeze, load_int8, quantize_dynamic, quantize_static
from training.inference.tiling import predict_tiled
from training.learning.dataset import load_split
from training.learning.quantize import calibration_inputs
from training.reports.figures import pyplot, save_png
from training.reports.provenance import produced_by

log = logging.getLogger(__name__)


def conv_macs(model: torch.nn.Module, size: int) -> int:
    """Multiply-accumulates of the convolutions for one size x size frame."""
    total = 0

    def hook(module: torch.nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
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


def measure(run: Callable[[], Any], repeat: int, max_seconds: float) -> dict[str, float]:
    """Median and p90 latency in milliseconds after two warm-up runs; stops early past max_seconds."""
    run()
    run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - started < max_seconds):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "runs": len(times),
    }


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
    """The int8 model `quantize` made from this very checkpoint (model_int8.pt beside it), or a fresh one; and the
    calibration inputs used, so that ONNX Runtime is calibrated on the same layers."""
    saved = Path(checkpoint).parent / "model_int8.pt"
    if saved.exists():
        payload = torch.load(saved, weights_only=True)
        int8_config = ModelConfig.from_dict(payload["model_config"])
        if int8_config.quantization.get("source_digest") == state_digest(model.state_dict()):
            images = int8_config.quantization["calibration"]["images"]
            calibration = calibration_inputs(records, config, images)
            log.info("using %s (calibrated on %d layers; ONNX Runtime gets the same layers)", saved, images)
            return load_int8(int8_config, payload["state_dict"]), calibration
        log.warning("%s was made from other weights than %s: quantizing afresh", saved, checkpoint)
    calibration = calibration_inputs(records, config, count)
    log.info("quantizing with default settings on %d calibration layers", len(calibration))
    return quantize_static(model, calibration, QuantizationConfig(calibration_images=count)), calibration


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
) -> dict[str, Any]:
    config, model, _ = load_checkpoint(checkpoint)
    records = load_split(Path(config.training.get("data", "")), "train", "heuristic")
    int8, calib = _int8_model(checkpoint, model, records, config, calibration)
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
            x = torch.randn(batch, 3, size, size, generator=generator)  # the same input for every row of this shape
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
    example = torch.zeros(1, 3, config.tile_size, config.tile_size)
    tiled = {}
    for name, net in (("fp32 eager", model), ("static int8 FX frozen", freeze(int8, example))):
        t0 = time.perf_counter()
        predict_tiled(net, layer, config)
        tiled[name] = (time.perf_counter() - t0) * 1e3
    macs = conv_macs(model, 512)
    return {"command": command, "checkpoint": str(checkpoint), "cpu": cpu_description(), "rows": rows, "sizes_bytes": sizes_bytes,
            "tiled_layer": {"size": layer_size, "tile": config.tile_size, "threads": max(threads), "ms": tiled}, "gmac_512": macs / 1e9}  # fmt: skip


# The rows that run what each registered variant serves (training/inference/loaders.py): the int8 speed-up is the
# served fp32 row over the served int8 row.
SERVED_ROWS = {"fp32": "fp32 channels_last", "int8": "static int8 FX frozen"}


def _lookup(rows: list[dict], variant: str, size: int, batch: int, threads: int) -> dict | None:
    return next(
        (r for r in rows if (r["variant"], r["size"], r["batch"], r["threads"]) == (variant, size, batch, threads)),
        None,
    )


def _ceiling(result: dict[str, Any], eager: dict, ort8: dict) -> list[str]:
    """How fast int8 could be against each reference if it ran at the CPU's estimated int8 peak. The peak is derived
    from the reported clock and assumed port counts, not measured, so the bound is an estimate, stated as one."""
    peak = result["cpu"].get("vnni_peak_gmacs")
    if not peak:
        return []
    gmac = result["gmac_512"]
    at_peak_ms = gmac / peak * 1e3
    fp32_peak = result["cpu"].get("fp32_peak_gmacs")
    eager_eff = (
        f" (fp32 eager runs at {gmac / (eager['median_ms'] / 1e3) / fp32_peak:.0%} of the fp32 FMA peak of {fp32_peak:.0f} GMAC/s)"
        if fp32_peak
        else ""
    )
    return [
        f"- estimated ceiling: at the estimated int8 peak (clock x assumed ports, not measured) one frame would take "
        f"{at_peak_ms:.1f} ms, so an int8 kernel could be at most about {eager['median_ms'] / at_peak_ms:.1f}x faster "
        f"than fp32 eager{eager_eff} and about {ort8['median_ms'] / at_peak_ms:.1f}x faster than ONNX Runtime int8 "
        f"(which runs at {gmac / (ort8['median_ms'] / 1e3) / peak:.0%} of that estimate); a turbo clock raises the estimate"
    ]


def write_report(result: dict[str, Any], report: Path) -> None:
    rows = result["rows"]
    shapes = sorted({(r["size"], r["batch"], r["threads"]) for r in rows})
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    head = "| variant | " + " | ".join(f"{s}² b{b} t{t}" for s, b, t in shapes) + " |"
    table = [head, "|---|" + "---|" * len(shapes)]
    for v in variants:
        cells = []
        for s, b, t in shapes:
            r = _lookup(rows, v, s, b, t)
            cells.append("-" if r is None else f"{r['median_ms']:.1f} ({r['p90_ms']:.1f})")
        table.append(f"| {v} | " + " | ".join(cells) + " |")
    size, batch, threads = 512, 1, max(r["threads"] for r in rows)
    ref = {v: _lookup(rows, v, size, batch, threads) for v in variants}
    ratios = []
    eager, int8f, ort8 = ref.get("fp32 eager"), ref.get("static int8 FX frozen"), ref.get("ONNX Runtime int8 (QDQ)")
    if eager and int8f and ort8:
        best_float = min(
            (ref[v] for v in ("fp32 channels_last", "fp32 TorchScript frozen") if ref.get(v)),
            key=lambda r: r["median_ms"],
        )
        gmacs = result["gmac_512"] / (int8f["median_ms"] / 1e3)
        served = ref.get(SERVED_ROWS["fp32"])
        ratios = [
            *(
                [
                    f"- **int8 speed-up** (the served int8 form, {SERVED_ROWS['int8']}, over the served fp32 form, "
                    f"{SERVED_ROWS['fp32']}; the definition in docs/design.md): **{served['median_ms'] / int8f['median_ms']:.1f}x**"
                ]
                if served
                else []
            ),
            f"- static int8 (frozen) vs fp32 eager (the prototype's float form): {eager['median_ms'] / int8f['median_ms']:.1f}x",
            f"- static int8 (frozen) vs the best float ({best_float['variant']}): {best_float['median_ms'] / int8f['median_ms']:.1f}x",
            f"- static int8 (frozen) vs ONNX Runtime int8: {ort8['median_ms'] / int8f['median_ms']:.1f}x",
            f"- int8 throughput: {result['gmac_512']:.1f} GMAC per frame / {int8f['median_ms']:.1f} ms = **{gmacs:.0f} GMAC/s**"
            + (
                f", {gmacs / result['cpu']['vnni_peak_gmacs']:.0%} of an estimated AVX-512 VNNI peak of "
                f"{result['cpu']['vnni_peak_gmacs']:.0f} GMAC/s (two 512-bit VPDPBUSD, 64 int8 multiply-accumulates "
                f"each, per cycle per core, at the {result['cpu']['mhz']:.0f} MHz the CPU reports, on "
                f"{result['cpu']['cores']} cores; a turbo clock would raise it)"
                if result["cpu"].get("vnni_peak_gmacs")
                else ""
            ),
            *_ceiling(result, eager, ort8),
        ]
    sizes = result["sizes_bytes"]
    size_lines = [f"| {k} | {v / 1e6:.2f} MB |" for k, v in sizes.items()]
    cpu = result["cpu"]
    tiled = result["tiled_layer"]
    text = "\n".join(
        [
            "# Benchmarks: float32 and int8 inference on the CPU",
            "",
            f"{produced_by('python -m bench model')} Regenerate:",
            "",
            "```bash",
            result["command"],
            "```",
            "",
            f"Machine: {cpu.get('model', 'unknown CPU')}, {cpu.get('cores')} cores visible, AVX-512 VNNI {cpu.get('avx512_vnni')}, "
            f"AMX int8 {cpu.get('amx_int8')}; torch {cpu.get('torch')}, ONNX Runtime {cpu.get('onnxruntime')}. All rows come from "
            "one run on the same inputs; the machine is shared, so quote ratios, not absolute times.",
            "",
            f"## At 512², batch 1, {threads} threads",
            "",
            *ratios,
            "",
            "## Median latency in ms (p90 in brackets), per input size, batch and threads",
            "",
            *table,
            "",
            "## Model files",
            "",
            "| file | size |",
            "|---|---|",
            *size_lines,
            "",
            f"fp32 / int8 state dict: {sizes['fp32 state dict'] / sizes['int8 state dict']:.2f}x smaller.",
            "",
            f"## One {tiled['size']}x{tiled['size']} layer, tiled ({tiled['tile']}-pixel tiles, {tiled['threads']} threads)",
            "",
            *[f"- {name}: {ms:.0f} ms" for name, ms in tiled["ms"].items()],
            "",
            f"![latency]({report.with_suffix('').name}.png)",
            "",
        ]
    )
    write_atomic(report, text.encode())
    fig, ax = pyplot().subplots(figsize=(7, 3.8))
    names = [v for v in variants if ref.get(v)]
    ax.barh(names, [ref[v]["median_ms"] for v in names])
    ax.set_xlabel(f"median latency at 512², batch 1, {threads} threads (ms)")
    ax.invert_yaxis()
    fig.tight_layout()
    save_png(fig, report.with_suffix(".png"))


def save_json(result: dict[str, Any], path: Path) -> None:
    write_json(path, result)
