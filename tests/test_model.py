import logging

import torch

from training.inference.config import ModelConfig
from training.inference.model import (
    build_model,
    cached_encoder_weights,
    load_checkpoint,
    load_pretrained_encoder,
    save_checkpoint,
)


def test_checkpoint_round_trip_rebuilds_the_model_from_its_config(tmp_path):
    config = ModelConfig(threshold=0.42, label_source="heuristic", training={"profile": "quick"})
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "c.pt", config, model.state_dict(), epoch=3)
    loaded_config, loaded, payload = load_checkpoint(tmp_path / "c.pt")
    assert loaded_config == config and payload["epoch"] == 3
    x = torch.randn(1, ModelConfig().in_channels, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))


def test_pretrained_weights_only_from_the_local_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # read when called
    model = build_model(ModelConfig(representation="shading"))  # three input channels, as ImageNet's
    with caplog.at_level(logging.WARNING):
        assert cached_encoder_weights("mobilenet_v2") is None
        assert not load_pretrained_encoder(model, "mobilenet_v2")
    assert "random initialisation" in caplog.text and "nothing is downloaded" in caplog.text

    # A real torchvision MobileNetV2 checkpoint file in the cache is found and loaded into the encoder.
    from torchvision.models import mobilenet_v2

    source = mobilenet_v2(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    assert load_pretrained_encoder(model, "mobilenet_v2")
    torch.testing.assert_close(model.encoder.features[0][0].weight, source.features[0][0].weight)
    four = build_model(ModelConfig(representation="shading+albedo"))  # the first convolution's kernels cycle
    assert load_pretrained_encoder(four, "mobilenet_v2")
    first, rgb = four.encoder.features[0][0].weight, source.features[0][0].weight
    torch.testing.assert_close(first[:, :3], rgb * 3 / 4)
    torch.testing.assert_close(first[:, 3], rgb[:, 0] * 3 / 4)
