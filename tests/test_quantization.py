import io

import pytest
import torch

from training.inference import openvino_backend
from training.inference.classes import DEFECT_CLASSES
from training.inference.config import ModelConfig
from training.inference.model import build_model
from training.inference.quantization import QuantizationConfig, freeze, load_int8, quantize_dynamic, quantize_static


@pytest.fixture(scope="module")
def float_model():
    torch.manual_seed(0)
    return build_model(ModelConfig()).eval()


def calibration(n=3, size=64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, ModelConfig().in_channels, size, size, generator=generator) for _ in range(n)]


@pytest.mark.parametrize("observer", ["histogram", "minmax"])
def test_static_int8_reloads_to_the_same_outputs(float_model, observer):
    settings = QuantizationConfig(observer=observer)
    int8 = quantize_static(float_model, calibration(), settings)
    config = ModelConfig(quantization={"settings": settings.to_dict()})
    buffer = io.BytesIO()
    torch.save(int8.state_dict(), buffer)
    buffer.seek(0)
    reloaded = load_int8(config, torch.load(buffer, weights_only=True))
    x = calibration(1, seed=9)[0]
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), int8(x), rtol=0, atol=0)
        float_out, int8_out = float_model(x), int8(x)
    assert (float_out - int8_out).abs().max() < 0.5 * float_out.abs().max()  # close to the float model, not equal


def test_int8_state_dict_is_much_smaller(float_model):
    int8 = quantize_static(float_model, calibration(), QuantizationConfig())
    sizes = []
    for model in (float_model, int8):
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        sizes.append(len(buffer.getvalue()))
    assert sizes[0] / sizes[1] > 3.5


def test_modules_can_be_kept_in_float(float_model):
    int8 = quantize_static(float_model, calibration(), QuantizationConfig(float_modules=("segmentation_head",)))
    kinds = {name: type(module).__module__ for name, module in int8.named_modules()}
    assert kinds["segmentation_head.0"] == "torch.nn.modules.conv"  # kept in float
    assert kinds["encoder.features.1.conv.0.0"].startswith("torch.ao.nn.quantized")
    assert kinds["decoder.blocks.0.conv1.0"].startswith("torch.ao.nn.intrinsic.quantized")  # conv-bn-relu fused


def test_dynamic_quantization_leaves_a_conv_net_unchanged(float_model):
    x = calibration(1)[0]
    with torch.inference_mode():
        torch.testing.assert_close(quantize_dynamic(float_model)(x), float_model(x))


def test_frozen_int8_gives_the_same_outputs(float_model):
    int8 = quantize_static(float_model, calibration(), QuantizationConfig())
    x = calibration(1, seed=5)[0]
    frozen = freeze(int8, x)
    with torch.inference_mode():
        torch.testing.assert_close(frozen(x), int8(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "qat"}, "static' or 'dynamic"),
        ({"engine": "arm"}, "choose from: x86"),
        ({"observer": "mse"}, "unknown observer"),
        ({"openvino_ranges": "quantile"}, "choose from: minmax, histogram, mean_minmax"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        QuantizationConfig(**change)


def test_float_config_cannot_build_an_int8_graph():
    with pytest.raises(ValueError, match="no quantization settings"):
        load_int8(ModelConfig(), {})


def test_quantize_command_writes_both_variants_and_agreement(tiny_run, tmp_path, repo_root):
    import json
    import shutil
    import subprocess
    import sys

    from training.learning.evaluate import evaluate_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    quantize = [sys.executable, "-m", "training", "quantize", "--checkpoint", str(run / "checkpoint.pt")]
    refused = subprocess.run(quantize, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "run `python -m training evaluate --checkpoint" in refused.stderr
    evaluate_checkpoint(run / "checkpoint.pt", reference="truth")
    result = subprocess.run(
        [*quantize, "--calibration", "4",
         "--report", str(tmp_path / "q.md"), "--sweep", "2,4"],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mask IoU" in result.stdout.strip().splitlines()[-1]
    report = json.loads((run / "quantization.json").read_text())
    assert report["threshold"] == json.loads((run / "decision.json").read_text())["threshold"]
    assert report["sizes_bytes"]["fp32"] / report["sizes_bytes"]["int8"] > 3.5
    assert 0.0 <= report["static_int8"]["mask_iou"] <= 1.0 and "f1_int8" in report["static_int8"]
    assert report["dynamic_int8"]["max_probability_difference"] == 0.0  # no Linear layers to quantize
    assert set(report["static_int8"]["class_iou"]) == set(DEFECT_CLASSES)  # a class model: agreement per class
    assert "Per class: IoU of each class's pixels" in (tmp_path / "q.md").read_text()
    payload = torch.load(run / "model_int8.pt", weights_only=True)
    config = ModelConfig.from_dict(payload["model_config"])
    assert (
        config.quantization["settings"]["observer"] == "histogram" and config.quantization["calibration"]["images"] == 4
    )
    timings = config.quantization["engine_timings_ms"]  # --engine auto: every available engine was timed
    assert "x86" in timings and config.quantization["settings"]["engine"] in timings
    assert isinstance(config.quantization["frozen"], bool)
    load_int8(config, payload["state_dict"])
    text = (tmp_path / "q.md").read_text()
    assert "the fastest measured here" in text
    assert [(r["backend"], r["observer"], r["images"]) for r in report["calibration_sweep"]] == [
        ("pytorch", "minmax", 2), ("pytorch", "minmax", 4), ("pytorch", "histogram", 2), ("pytorch", "histogram", 4),
        ("openvino", "minmax", 4), ("openvino", "histogram", 4), ("openvino", "mean_minmax", 4),
    ]  # fmt: skip
    assert "Highest agreement, openvino: `" in text
    assert "## Calibration sweep (validation split)" in text
    assert "| PyTorch static int8 (FX, calibrated) |" in text and "python -m training quantize" in text
    assert "| OpenVINO int8 (NNCF post-training, same calibration layers) |" in text
    assert 0.0 <= report["openvino_int8"]["mask_iou"] <= 1.0 and "f1_int8" in report["openvino_int8"]
    assert set(report["files"]["int8"]) == {"pytorch", "openvino"}
    openvino_config, _ = openvino_backend.read(run / "model_int8.xml")
    assert openvino_config.quantization["calibration"] == config.quantization["calibration"]  # the same layers


def test_quantization_result_keeps_the_json_keys_and_renders_without_truth():
    from training.learning.quantize import Quantization
    from training.reports.quantization import render

    no_truth = {"mask_iou": 0.98, "decision_agreement": 1.0, "max_probability_difference": 0.01}
    result = Quantization(
        command="QUANTIZE", checkpoint="run/checkpoint.pt", settings=QuantizationConfig(float_modules=("head",)),
        calibration_seconds=1.5, split="test", layers=2, threshold=0.5,
        sizes_bytes={"fp32": 4000, "int8": 1000, "openvino fp32": 4100, "openvino int8": 1200},
        engine_timings_ms={}, calibration_sweep=[], static_int8=no_truth, dynamic_int8=no_truth,
        openvino_int8={**no_truth, "mask_iou": 0.99},
        files={"fp32": {"pytorch": "model_fp32.pt", "openvino": "model_fp32.xml"},
               "int8": {"pytorch": "model_int8.pt", "openvino": "model_int8.xml"}},
    )  # fmt: skip
    data = result.to_dict()
    assert list(data) == [
        "command", "checkpoint", "settings", "calibration_seconds", "split", "layers", "threshold", "sizes_bytes",
        "engine_timings_ms", "calibration_sweep", "static_int8", "dynamic_int8", "openvino_int8", "files",
    ]  # fmt: skip
    assert data["settings"] == QuantizationConfig(float_modules=("head",)).to_dict()
    assert Quantization.from_dict(data) == result
    text = render(result)
    assert "engine `x86` (chosen by hand)" in text and "kept in float: head." in text and "QUANTIZE" in text
    assert "| PyTorch static int8 (FX, calibrated) | 0.980 | 1.000 | n/a | n/a | n/a | 0.010 |" in text
    assert "| OpenVINO int8 (NNCF post-training, same calibration layers) | 0.990 | 1.000 |" in text
    assert "(4.00x smaller)" in text and "OpenVINO IR (xml and bin): fp32 0.00 MB" in text
    assert "Calibration sweep" not in text
