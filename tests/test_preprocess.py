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


def test_to_unit_scales_by_bit_depth_and_puts_the_lights_first():
    assert to_unit(np.array([[[0, 255, 51]]], np.uint8)).tolist() == [[[0.0]], [[1.0]], [[pytest.approx(0.2)]]]
    assert to_unit(np.array([[[65535, 0, 0]]], np.uint16))[0, 0, 0] == 1.0
    with pytest.raises(ValueError, match="8- or 16-bit"):
        to_unit(np.zeros((1, 1, 3), np.float32))


def test_normalize_uses_the_config_per_channel():
    config = ModelConfig(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    out = normalize(np.full((3, 2, 4), 0.5, np.float32), config)
    assert out.shape == (3, 2, 4)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"\(C, H, W\) stack with C = 3"):
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
    # configs from before tiles were a serving setting carry the tile they were served with
    assert ModelConfig.from_dict({**config.to_dict(), "tile_size": 512}) == config
    with pytest.raises(ValueError, match="unknown encoder"):
        ModelConfig(encoder="resnet9000")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ModelConfig(threshold=1.0)
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"colour": 1})


@pytest.mark.parametrize("length", [33, 512, 1000, 1024, 1025, 2048, 3000, 4096])
@pytest.mark.parametrize(("tile", "overlap"), [(2048, 256), (1024, 128), (512, 64), (64, 16), (64, 0)])
def test_tiles_are_few_of_one_size_overlapping_and_each_answers_for_what_it_holds_deepest(length, tile, overlap):
    from training.inference.tiling import spans

    tiles = spans(length, tile, overlap, 32)
    assert len(tiles) == -(-length // tile)  # as few as answer for at most `tile` pixels each
    assert tiles[0].start == tiles[0].own_start == 0 and tiles[-1].stop == tiles[-1].own_stop == length
    if len(tiles) == 1:
        return
    sides = {t.stop - t.start for t in tiles}
    assert len(sides) == 1 and sides.pop() % 32 == 0  # one shape, needing no padding
    for before, after in itertools.pairwise(tiles):
        assert before.stop - after.start >= overlap  # neighbours share at least the overlap
        assert before.own_stop == after.own_start  # what they answer for meets, without a gap or twice
        # the cut is in the middle of the shared pixels: each side of it is deeper in its own tile
        assert abs((before.stop - before.own_stop) - (after.own_start - after.start)) <= 1


def test_spans_of_the_served_defaults():
    from training.inference.config import TILE_OVERLAP, TILE_SIZE
    from training.inference.tiling import Span, spans

    assert spans(2048, TILE_SIZE, TILE_OVERLAP, 32) == [Span(0, 2048, 0, 2048)]  # a 2048 layer runs whole
    assert spans(4096, TILE_SIZE, TILE_OVERLAP, 32) == [Span(0, 2176, 0, 2048), Span(1920, 4096, 2048, 4096)]
    with pytest.raises(ValueError, match="multiple of 32"):
        spans(2048, 1000, 64, 32)
    with pytest.raises(ValueError, match=r"overlap must be within 0\.\.63"):
        spans(2048, 64, 64, 32)


@pytest.mark.parametrize("class_names", [(), DEFECT_CLASSES])
def test_tiled_prediction_is_the_whole_layer_s_for_a_model_that_sees_less_than_half_the_overlap(class_names):
    """Each tile answers for the pixels at least half the overlap inside it: a model that sees 3 pixels around each
    pixel (three 3x3 convolutions) gives, through 64-pixel tiles overlapping by 16, every probability of the whole
    layer (of a defect, and of each class from a class model). A layer side shorter than a tile is one tile."""
    import torch

    from training.inference.tiling import predict_probabilities, predict_tiled

    torch.manual_seed(0)
    config = ModelConfig(representation="shading", class_names=class_names)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, config.out_channels, 3, padding=1),
    ).eval()
    for shape in [(150, 200), (40, 300)]:
        stack = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
        tiled = predict_tiled(model, stack, config, tile=64, overlap=16)
        whole = predict_probabilities(model, stack, config)
        assert tiled.defect.shape == shape
        np.testing.assert_allclose(tiled.defect, whole.defect, atol=1e-5)
        if class_names:
            assert tiled.classes.shape == (len(class_names), *shape)
            np.testing.assert_allclose(tiled.classes, whole.classes, atol=1e-5)
            np.testing.assert_allclose(tiled.classes.sum(axis=0), tiled.defect, atol=1e-5)  # classes split the defect
        else:
            assert tiled.classes is None


def _surface_like(seed: int = 0, size: int = 96) -> np.ndarray:
    """Three float images in 0..1 that share a reflectance and differ in shading, like three lights' images,
    (3, H, W)."""
    import cv2

    rng = np.random.default_rng(seed)
    height = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 2.0)
    gy, gx = np.gradient(height)
    albedo = 0.4 * (1.0 + 0.1 * cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.0))
    shading = [1.0 + 3.0 * (np.cos(a) * gx - np.sin(a) * gy) for a in np.radians([0.0, 120.0, 240.0])]
    return np.stack([albedo * np.clip(s, 0.05, None) for s in shading]).astype(np.float32)


@pytest.mark.parametrize("albedo", [False, True])
def test_shading_cancels_exposure_per_light_gain_and_vignetting(albedo):
    unit = _surface_like()
    size = unit.shape[1]
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    vignette = 1.0 - 0.3 * (xx**2 + yy**2)
    changed = (
        unit * 1.6 * np.array([0.8, 1.0, 1.2], np.float32)[:, None, None] * vignette
    )  # brighter camera, lights differ
    base = shading_channels(unit, 32.0, albedo)
    np.testing.assert_allclose(shading_channels(changed.astype(np.float32), 32.0, albedo)[:3], base[:3],
                               atol=0.1)  # fmt: skip
    if albedo:  # the albedo channel cancels exposure exactly (not per-light gains: it mixes the lights)
        np.testing.assert_allclose(shading_channels(unit * 1.6, 32.0, True)[3], base[3], atol=1e-3)


def test_shading_follows_a_power_law_response_closely():
    unit = _surface_like(1)
    base = shading_channels(unit, 32.0)
    for gamma in (0.6, 1.5):
        bent = shading_channels((unit**gamma).astype(np.float32), 32.0)
        assert np.corrcoef(base.ravel(), bent.ravel())[0, 1] > 0.97
        assert 0.8 < np.std(bent) / np.std(base) < 1.25  # the layer's spread takes the exponent out


def test_intensity_shifts_with_exposure_where_shading_does_not():
    stack = np.clip(_surface_like(2).transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8)
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


@pytest.mark.parametrize("representation", ["shading", "shading+albedo", "intensity"])
def test_preprocessing_in_bands_on_threads_gives_the_values_of_one_piece(representation):
    import torch

    stack = np.random.default_rng(0).integers(0, 65535, (700, 600, 3), dtype=np.uint16)
    config = ModelConfig(representation=representation)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_piece = model_channels(stack, config)
        torch.set_num_threads(2)  # two bands of 350 rows
        np.testing.assert_array_equal(model_channels(stack, config), one_piece)
    finally:
        torch.set_num_threads(threads)


def test_a_forked_child_preprocesses_on_threads_of_its_own():
    import os
    import signal

    import torch

    stack = np.random.default_rng(1).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = model_channels(stack, ModelConfig())  # the parent's threads exist now
        child = os.fork()
        if child == 0:  # the parent's pool has no threads here: without its own, the child would wait forever
            signal.alarm(30)  # so it dies instead
            same = np.array_equal(model_channels(stack, ModelConfig()), expected)
            os._exit(0 if same else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        torch.set_num_threads(threads)
