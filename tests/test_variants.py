import shutil

import pytest
import torch

from training.inference.loaders import ChannelsLast, load_variant
from training.inference.model import load_checkpoint
from training.inference.openvino_backend import OpenVINOModel, read
from training.inference.quantization import load_int8
from training.inference.variants import BACKENDS, VARIANTS, default_model, model_names, variant, variant_of


def test_fp32_variant_is_the_checkpoint_in_channels_last(tiny_variants):
    _, reference, _ = load_checkpoint(tiny_variants / "checkpoint.pt")
    config, model = load_variant(tiny_variants / "model_fp32.pt")
    assert variant_of(config).key == "fp32" and isinstance(model, ChannelsLast)
    x = torch.randn(1, config.in_channels, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_int8_variant_frozen_gives_the_same_output_as_the_fx_graph_at_any_size(tiny_variants):
    payload = torch.load(tiny_variants / "model_int8.pt", weights_only=True)
    config, model = load_variant(tiny_variants / "model_int8.pt")
    assert variant_of(config).key == "int8"
    reference = load_int8(config, payload["state_dict"])
    for shape in [(1, config.in_channels, 64, 64), (2, config.in_channels, 96, 160)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_openvino_fp32_build_is_the_checkpoint_at_any_size_in_float32(tiny_variants):
    _, reference, _ = load_checkpoint(tiny_variants / "checkpoint.pt")
    config, model = load_variant(tiny_variants / "model_fp32.xml")
    assert variant_of(config).key == "fp32" and config.backend == "openvino" and isinstance(model, OpenVINOModel)
    assert model.settings()["INFERENCE_PRECISION_HINT"] == "f32"
    stored = read(tiny_variants / "model_fp32.xml")[1]  # the IR as saved, before the CPU plugin converts anything
    constants = {op.get_element_type().get_type_name() for op in stored.get_ops() if op.get_type_name() == "Constant"}
    assert "f32" in constants and "f16" not in constants  # the weights were not halved on saving
    for shape in [(1, config.in_channels, 64, 96), (2, config.in_channels, 96, 160)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_openvino_int8_build_is_quantized_by_nncf_from_the_same_weights(tiny_variants):
    int8_config, int8 = load_variant(tiny_variants / "model_int8.xml")
    pytorch_config, _ = load_variant(tiny_variants / "model_int8.pt")
    assert variant_of(int8_config).key == "int8" and int8_config.backend == "openvino"
    assert int8_config.quantization["tool"].startswith("nncf ")
    assert int8_config.quantization["source_digest"] == pytorch_config.quantization["source_digest"]
    assert int8_config.quantization["calibration"] == pytorch_config.quantization["calibration"]
    assert _convolution_precisions(int8) == {"u8"}  # the CPU runs every convolution in int8
    assert _convolution_precisions(load_variant(tiny_variants / "model_fp32.xml")[1]) == {"f32"}
    x = torch.randn(2, int8_config.in_channels, 96, 160)
    assert int8(x).shape == (2, int8_config.out_channels, 96, 160)


def _convolution_precisions(model: OpenVINOModel) -> set[str]:
    """The precisions the compiled model runs its convolutions in."""
    infos = [op.get_rt_info() for op in model.compiled.get_runtime_model().get_ops()]
    return {i["runtimePrecision"].astype(str) for i in infos if i["layerType"].astype(str) == "Convolution"}


def test_an_openvino_model_file_must_be_whole_and_ours(tiny_variants, tmp_path):
    import openvino as ov

    shutil.copy(tiny_variants / "model_fp32.xml", tmp_path / "model_fp32.xml")
    with pytest.raises(FileNotFoundError, match=r"model_fp32.bin not found \(an IR is model_fp32.xml and .bin\)"):
        load_variant(tmp_path / "model_fp32.xml")
    ours = ov.Core().read_model(tiny_variants / "model_fp32.xml")
    foreign = ov.Model(ours.outputs, ours.get_parameters())  # the same graph without our runtime info
    ov.save_model(foreign, tmp_path / "foreign.xml", compress_to_fp16=False)
    with pytest.raises(ValueError, match="not a model file of this project"):
        load_variant(tmp_path / "foreign.xml")
    stored, _ = load_variant(tiny_variants / "model_fp32.pt")
    with pytest.raises(ValueError, match="is a openvino model file, but its config names pytorch"):
        load_variant(tiny_variants / "model_fp32.xml", stored)


def test_a_served_config_replaces_the_stored_one_and_must_fit_the_weights(tiny_variants, tmp_path):
    shutil.copy(tiny_variants / "model_fp32.pt", tmp_path / "model_fp32.pt")
    stored, _ = load_variant(tmp_path / "model_fp32.pt")
    served, _ = load_variant(tmp_path / "model_fp32.pt", stored.replace(threshold=0.3))
    assert stored.threshold is None and served.threshold == 0.3
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_variant(tmp_path / "model_fp32.pt", stored.replace(class_names=()))
    with pytest.raises(FileNotFoundError):
        load_variant(tmp_path / "missing.pt")


def test_the_registry_names_every_variant_once():
    assert [v.key for v in VARIANTS] == ["fp32", "int8"]
    assert model_names() == ("defect_fp32", "defect_int8") and default_model() == "defect_int8"
    files = [f for v in VARIANTS for f in v.files]
    assert len(set(files)) == len(files)
    assert all(tuple(b.backend for b in v.builds) == BACKENDS for v in VARIANTS)  # every variant on every backend
    with pytest.raises(ValueError, match="no 'tensorrt' build; choose from: pytorch, openvino"):
        variant("fp32").build("tensorrt")
    assert variant("int8").archive == "defect_int8.mar"
    with pytest.raises(ValueError, match="choose from: fp32, int8"):
        variant("fp16")


class _Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_model_file_carrying_code_is_refused_not_run(tiny_variants, tmp_path):
    import pickle

    payload = torch.load(tiny_variants / "model_fp32.pt", weights_only=True)
    torch.save({**payload, "extra": _Payload()}, tmp_path / "model_fp32.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_variant(tmp_path / "model_fp32.pt")


def test_the_model_bench_names_a_served_row_for_every_variant():
    from training.reports.benchmarks import BUILD_ROWS

    assert {key: tuple(rows) for key, rows in BUILD_ROWS.items()} == {v.key: BACKENDS for v in VARIANTS}


def test_warm_up_runs_each_shape_a_layer_of_the_expected_side_is_run_as():
    from training.inference.config import ModelConfig
    from training.inference.tiling import warm_up

    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x

    config = ModelConfig()
    warm_up(Recorder(), config, 512)
    warm_up(Recorder(), config, 500)  # padded to the multiple
    warm_up(Recorder(), config, 4096, tile=1024, overlap=128)  # sixteen tiles of one shape
    channels = config.in_channels
    assert seen == [(1, channels, 512, 512), (1, channels, 512, 512), (1, channels, 1120, 1120)]
