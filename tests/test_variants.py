import shutil

import pytest
import torch

from training.inference.model import load_checkpoint
from training.inference.quantization import load_int8
from training.inference.variants import ChannelsLast, load_variant, variant_of


def test_fp32_variant_is_the_checkpoint_in_channels_last(tiny_variants):
    _, reference, _ = load_checkpoint(tiny_variants / "checkpoint.pt")
    config, model = load_variant(tiny_variants / "model_fp32.pt")
    assert variant_of(config) == "fp32" and isinstance(model, ChannelsLast)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_int8_variant_frozen_gives_the_same_output_as_the_fx_graph_at_any_size(tiny_variants):
    payload = torch.load(tiny_variants / "model_int8.pt", weights_only=True)
    config, model = load_variant(tiny_variants / "model_int8.pt")
    assert variant_of(config) == "int8"
    reference = load_int8(config, payload["state_dict"])
    for shape in [(1, 3, 64, 64), (2, 3, 96, 160)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_a_config_that_disagrees_with_the_weights_is_refused(tiny_variants, tmp_path):
    shutil.copy(tiny_variants / "model_fp32.pt", tmp_path / "model_fp32.pt")
    config, _ = load_variant(tmp_path / "model_fp32.pt")
    with pytest.raises(ValueError, match="differs"):
        load_variant(tmp_path / "model_fp32.pt", config.replace(threshold=0.3))
    with pytest.raises(FileNotFoundError):
        load_variant(tmp_path / "missing.pt")


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
