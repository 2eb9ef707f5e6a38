import itertools

import numpy as np
import pytest

from training.inference.classes import DEFECT_CLASSES
from training.inference.config import ModelConfig
from training.inference.preprocess import (
    channel_statistics,
    model_channels,
    normalize,
    pad_to_multiple,
    shading_channels,
    to_unit,
)


def test_to_unit_scales_by_bit_depth():
    assert to_unit(np.array([[[0, 255, 51]]], np.uint8)).tolist() == [[[0.0, 1.0, pytest.approx(0.2)]]]
    assert to_unit(np.array([[[65535, 0, 0]]], np.uint16))[0, 0, 0] == 1.0
    with pytest.raises(ValueError, match="8- or 16-bit"):
        to_unit(np.zeros((1, 1, 3), np.float32))


def test_normalize_uses_the_config_and_moves_channels_first():
    config = ModelConfig(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = normalize(np.full((2, 3, 3), 0.5, np.float32), config)
    assert out.shape == (3, 2, 3)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        normalize(np.zeros((2, 3), np.float32), config)


def test_pad_to_multiple_keeps_content_and_reports_the_original_size():
    chw = np.arange(3 * 33 * 40, dtype=np.float32).reshape(3, 33, 40)
    padded, size = pad_to_multiple(chw, 32)
    assert padded.shape == (3, 64, 64) and size == (33, 40)
    np.testing.assert_array_equal(padded[:, :33, :40], chw)
    same, _ = pad_to_multiple(np.zeros((3, 64, 32), np.float32), 32)
    assert same.shape == (3, 64, 32)


def test_channel_statistics():
    a = np.zeros((2, 2, 3), np.uint8)
    a[..., 1] = 255
    mean, std = channel_statistics([a, a])
    assert mean == (0.0, 1.0, 0.0) and max(std) < 1e-3


def test_model_config_round_trip_and_checks():
    config = ModelConfig(threshold=0.3, training={"layers": 5})
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown encoder"):
        ModelConfig(encoder="resnet9000")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ModelConfig(threshold=1.0)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"colour": 1})


def test_tiles_cover_the_image_with_the_overlap():
    from training.inference.tiling import tile_starts

    assert tile_starts(512, 512, 64) == [0]
    assert tile_starts(2048, 512, 64) == [0, 448, 896, 1344, 1536]
    starts = tile_starts(1000, 512, 64)
    assert starts[0] == 0 and starts[-1] + 512 == 1000
    assert all(b - a <= 512 - 64 for a, b in itertools.pairwise(starts))


def test_blend_ramps_of_neighbouring_tiles_sum_to_one_in_their_overlap():
    from training.inference.tiling import blend_weights

    weights = blend_weights(8, 4)
    ramp = np.sqrt(np.diag(weights))  # weights are the outer product of one ramp with itself
    np.testing.assert_allclose(ramp, [0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    np.testing.assert_allclose(weights, np.outer(ramp, ramp), atol=1e-7)
    np.testing.assert_allclose(ramp[4:] + ramp[:4], 1.0)  # tile at 0 and tile at stride 4 share pixels 4..7


@pytest.mark.parametrize("class_names", [(), DEFECT_CLASSES])
def test_tiled_prediction_blends_to_the_whole_image_result_for_a_pointwise_model(class_names):
    """A 1x1-conv model has no spatial context, so tiling must not change a single probability (of a defect, and
    of each class from a class model)."""
    import torch

    from training.inference.tiling import predict_probabilities, predict_tiled

    torch.manual_seed(0)
    config = ModelConfig(tile_size=64, representation="shading", class_names=class_names)
    model = torch.nn.Conv2d(3, config.out_channels, kernel_size=1).eval()
    stack = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    tiled = predict_tiled(model, stack, config, overlap=16)
    whole = predict_probabilities(model, stack, config.replace(tile_size=256))
    assert tiled.defect.shape == (150, 200)
    np.testing.assert_allclose(tiled.defect, whole.defect[:150, :200], atol=1e-5)
    if class_names:
        assert tiled.classes.shape == (len(class_names), 150, 200)
        np.testing.assert_allclose(tiled.classes, whole.classes, atol=1e-5)
        np.testing.assert_allclose(tiled.classes.sum(axis=0), tiled.defect, atol=1e-5)  # classes split the defect
    else:
        assert tiled.classes is None
    narrow = stack[:40]  # shorter than a tile in one direction: another layer, with its own statistics
    whole_narrow = predict_probabilities(model, narrow, config.replace(tile_size=256))
    np.testing.assert_allclose(predict_tiled(model, narrow, config, overlap=16).defect, whole_narrow.defect, atol=1e-5)


def _surface_like(seed: int = 0, size: int = 96) -> np.ndarray:
    """Three float images in 0..1 that share a reflectance and differ in shading, like three lights' images."""
    import cv2

    rng = np.random.default_rng(seed)
    height = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.0)
    gy, gx = np.gradient(height)
    albedo = 0.4 * (1.0 + 0.1 * cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.0))
    shading = [1.0 + 3.0 * (np.cos(a) * gx - np.sin(a) * gy) for a in np.radians([0.0, 120.0, 240.0])]
    return np.stack([albedo * np.clip(s, 0.05, None) for s in shading], axis=-1).astype(np.float32)


@pytest.mark.parametrize("albedo", [False, True])
def test_shading_cancels_exposure_per_light_gain_and_vignetting(albedo):
    unit = _surface_like()
    size = unit.shape[0]
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    vignette = (1.0 - 0.3 * (xx**2 + yy**2))[..., None]
    changed = unit * 1.6 * np.array([0.8, 1.0, 1.2], np.float32) * vignette  # brighter camera, lights differ
    base = shading_channels(unit, 32.0, albedo)
    np.testing.assert_allclose(shading_channels(changed.astype(np.float32), 32.0, albedo)[..., :3], base[..., :3],
                               atol=0.1)  # fmt: skip
    if albedo:  # the albedo channel cancels exposure exactly (not per-light gains: it mixes the lights)
        np.testing.assert_allclose(shading_channels(unit * 1.6, 32.0, True)[..., 3], base[..., 3], atol=1e-3)


def test_shading_follows_a_power_law_response_closely():
    unit = _surface_like(1)
    base = shading_channels(unit, 32.0)
    for gamma in (0.6, 1.5):
        bent = shading_channels((unit**gamma).astype(np.float32), 32.0)
        assert np.corrcoef(base.ravel(), bent.ravel())[0, 1] > 0.97
        assert 0.8 < np.std(bent) / np.std(base) < 1.25  # the layer's spread takes the exponent out


def test_intensity_shifts_with_exposure_where_shading_does_not():
    stack = np.clip(_surface_like(2) * 255, 0, 255).astype(np.uint8)
    brighter = np.clip(stack.astype(np.float32) * 1.5, 0, 255).astype(np.uint8)
    shading = ModelConfig(representation="shading")
    intensity = ModelConfig(representation="intensity", mean=(0.4,) * 3, std=(0.08,) * 3)
    assert abs(model_channels(brighter, intensity).mean() - model_channels(stack, intensity).mean()) > 1.0
    assert abs(model_channels(brighter, shading).mean() - model_channels(stack, shading).mean()) < 0.1


def test_model_channels_checks_the_stack_and_counts_channels():
    stack = np.full((40, 40, 3), 100, np.uint8)
    assert model_channels(stack, ModelConfig(representation="shading")).shape == (3, 40, 40)
    assert model_channels(stack, ModelConfig(representation="shading+albedo")).shape == (4, 40, 40)
    assert ModelConfig(representation="shading+albedo").in_channels == 4
    with pytest.raises(ValueError, match=r"\(H, W, 3\) stack, one image per light"):
        model_channels(stack[..., :2], ModelConfig())
    with pytest.raises(ValueError, match="unknown input representation 'raw'; choose from: shading"):
        ModelConfig(representation="raw")
    with pytest.raises(ValueError, match="decoder channels need 5"):
        ModelConfig(decoder_channels=(64, 32))
