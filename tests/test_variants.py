import shutil

import pytest
import torch

from training.inference.loaders import ChannelsLast, load_variant
from training.inference.model import load_checkpoint
from training.inference.quantization import load_int8
from training.inference.variants import VARIANTS, default_model, model_names, variant, variant_of


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
    assert len({v.file for v in VARIANTS}) == len(VARIANTS)
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
    from training.reports.benchmarks import SERVED_ROWS

    assert set(SERVED_ROWS) == {v.key for v in VARIANTS}
