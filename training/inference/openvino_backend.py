"""The OpenVINO backend: a float model converted to OpenVINO's intermediate representation (IR), an int8 one made
from it by NNCF's post-training quantization on the same calibration layers as PyTorch's int8, and a torch module
over the compiled model, so that tiling, the handler and the benchmarks run it as they run the PyTorch builds.

An IR is two files, <name>.xml (the graph) and <name>.bin (the weights, kept in float32: OpenVINO would halve
them to float16 by default). The xml carries the ModelConfig in its runtime info, as a PyTorch model file carries it
beside the state dict, so an IR describes itself.

Every use of `openvino` and `nncf` is in this module; the serving image needs only `openvino`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from training.inference.config import ModelConfig

if TYPE_CHECKING:
    import openvino as ov

    from training.inference.quantization import QuantizationConfig

CONFIG_KEY = "defect_model_config"  # the IR's runtime-info entry that holds the ModelConfig as JSON
DIGEST_KEY = "defect_source_digest"  # and the one that names the checkpoint weights it was made from
DEVICE = "CPU"


def compile_properties(threads: int) -> dict[str, Any]:
    """OpenVINO's CPU settings for one request at a time on `threads` threads, stated rather than left to defaults
    that depend on the machine."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        # OpenVINO schedules with TBB: neither OMP_NUM_THREADS nor torch.set_num_threads reaches it.
        "INFERENCE_NUM_THREADS": threads,
        # Unset, CPUs with AVX512_BF16 run float layers in bfloat16: not the model that was measured.
        "INFERENCE_PRECISION_HINT": "f32",
        # The worker shares its cores with TorchServe's frontend and the other variant's worker.
        "ENABLE_CPU_PINNING": False,
        # The latency hint would use one thread of each physical core: on a 2-vCPU machine (one core, two hardware
        # threads) that halves INFERENCE_NUM_THREADS.
        "ENABLE_HYPER_THREADING": True,
    }


def convert(model: nn.Module, config: ModelConfig) -> ov.Model:
    """The float network as an OpenVINO model taking any batch and any height and width (a layer is padded only
    to a multiple of `size_multiple`, tiles have the size a layer's side calls for)."""
    import openvino as ov

    side = 8 * config.size_multiple  # any side the network takes: it is traced once, the result takes every side
    example = torch.zeros(1, config.in_channels, side, side)
    with torch.no_grad():
        return ov.convert_model(model.eval(), example_input=example, input=[-1, config.in_channels, -1, -1])


def quantize(model: ov.Model, calibration: list[torch.Tensor], settings: QuantizationConfig) -> ov.Model:
    """int8 by NNCF's post-training quantization of a converted float model, on the calibration inputs (N, C, H, W):
    weights per channel, activations' ranges from the calibration layers as `settings.openvino_ranges` says, then
    bias correction layer by layer. `settings.float_modules` stay float32."""
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    ignored = None
    if settings.float_modules:  # OpenVINO's node names start with the torch module's path
        patterns = [rf"__module\.{re.escape(name)}(\.|/).*" for name in settings.float_modules]
        ignored = nncf.IgnoredScope(patterns=patterns, validate=True)
    return nncf.quantize(
        model,
        nncf.Dataset(calibration, lambda x: x.numpy()),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU,
        subset_size=len(calibration),
        fast_bias_correction=False,  # the full bias correction: slower to make, closer to float32
        ignored_scope=ignored,
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, settings.openvino_ranges.upper())
        ),
    )


def ir_files(path: Path) -> tuple[Path, Path]:
    """The two files of the IR named by its .xml: the graph and the weights beside it."""
    path = Path(path)
    return path, path.with_suffix(".bin")


def nncf_version() -> str:
    import nncf

    return nncf.__version__


def save(model: ov.Model, config: ModelConfig, path: Path, source_digest: str) -> Path:
    """Write the IR (`path` ending in .xml, the weights beside it as .bin) with `config` and the digest of the
    checkpoint weights it was made from inside; both files are staged and renamed into place, the xml last."""
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO model file ends in .xml, got {path}")
    model.set_rt_info(json.dumps(config.to_dict()), CONFIG_KEY)
    model.set_rt_info(source_digest, DIGEST_KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.stem}-", dir=path.parent) as tmp:
        staged_xml, staged_bin = ir_files(Path(tmp) / path.name)
        ov.save_model(model, staged_xml, compress_to_fp16=False)
        os.replace(staged_bin, ir_files(path)[1])
        os.replace(staged_xml, path)
    return path


def read(path: Path) -> tuple[ModelConfig, ov.Model]:
    """(ModelConfig, OpenVINO model) of an IR written by `save`."""
    import openvino as ov

    path = Path(path)
    for part in ir_files(path):
        if not part.exists():
            raise FileNotFoundError(f"OpenVINO model file {part} not found (an IR is {path.stem}.xml and .bin)")
    model = ov.Core().read_model(path)
    if not model.has_rt_info(CONFIG_KEY):
        raise ValueError(f"{path} is not a model file of this project (no {CONFIG_KEY} in its runtime info)")
    return ModelConfig.from_dict(json.loads(model.get_rt_info(CONFIG_KEY).astype(str))), model


def source_digest(model: ov.Model) -> str:
    """The digest of the checkpoint weights an IR read by `read` was made from."""
    return model.get_rt_info(DIGEST_KEY).astype(str) if model.has_rt_info(DIGEST_KEY) else ""


class OpenVINOModel(nn.Module):
    """A compiled OpenVINO model behind torch's module interface: a float32 batch (N, C, H, W) in, the network's
    logits out, as a torch tensor. One infer request, reused: a worker answers one request at a time."""

    def __init__(self, model: ov.Model, threads: int) -> None:
        import openvino as ov

        super().__init__()
        self.compiled = ov.Core().compile_model(model, DEVICE, compile_properties(threads))
        self.request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.request.infer(batch, share_inputs=True)[0])  # outputs are copied out

    def settings(self) -> dict[str, str]:
        """What the compiled model really runs with (the CPU plugin may adjust what it was asked)."""
        return {key: _text(self.compiled.get_property(key)) for key in compile_properties(1)}


def _text(value: Any) -> str:
    """A property's value as its settings are written: "f32", "LATENCY", "1", "False"."""
    if hasattr(value, "get_type_name"):  # an element type
        return value.get_type_name()
    return getattr(value, "name", None) or str(value)  # an enum, else the value
