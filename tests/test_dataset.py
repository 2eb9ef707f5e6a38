import numpy as np
import pytest
import torch

from training.inference.config import ModelConfig
from training.learning.augment import ClassBalancedCrop, InputJitter, LightSymmetry, training_transform
from training.learning.dataset import TrainingCrops, load_split


def test_label_sources(tiny_prepared, tmp_path):
    truth = load_split(tiny_prepared, "train", "truth")
    heuristic = load_split(tiny_prepared, "train", "heuristic")
    assert [r.layer_id for r in truth] == [r.layer_id for r in heuristic] and len(truth) == 6
    for t, h in zip(truth, heuristic, strict=True):
        np.testing.assert_array_equal(t.label, t.truth > 0)
        np.testing.assert_array_equal(h.label, h.heuristic)
        assert t.stack.shape == (64, 64, 3)
    import cv2

    for r in truth:  # user-supplied masks in the same layout
        cv2.imwrite(str(tmp_path / f"{r.layer_id}.png"), np.full((64, 64), 255, np.uint8))
    masks = load_split(tiny_prepared, "train", "masks", tmp_path)
    assert all(r.label.all() for r in masks)


@pytest.mark.parametrize(
    ("labels", "masks", "message"),
    [("pseudo", None, "choose from: heuristic, truth, masks"), ("masks", None, "needs --masks")],
)
def test_label_source_errors(tiny_prepared, labels, masks, message):
    with pytest.raises(ValueError, match=message):
        load_split(tiny_prepared, "train", labels, masks)


def test_missing_manifest_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m training prepare"):
        load_split(tmp_path, "train", "truth")


def test_training_crops_are_normalised_tensors_with_masks(tiny_prepared):
    records = load_split(tiny_prepared, "train", "truth")
    config = ModelConfig()
    transform = training_transform(32, config.azimuths_deg)
    transform.set_random_seed(0)
    crops = TrainingCrops(records, config, transform, repeats=3)
    assert len(crops) == 18
    item = crops[0]
    assert item["image"].shape == (config.in_channels, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_defect_crops_draw_each_class_alike():
    """A one-pixel pit beside a large streak: pixel-drawn crops would almost never hold the pit; class-drawn ones
    hold it about half the time. A 0/1 mask is cropped around any labelled pixel."""
    mask = np.zeros((256, 256), np.uint8)
    mask[:128] = 1  # streak: 32768 pixels
    mask[200, 200] = 6  # pit: 1 pixel
    image = np.zeros((256, 256, 3), np.float32)
    crop = ClassBalancedCrop(32, 32)
    crop.set_random_seed(0)
    held = [6 in crop(image=image, mask=mask)["mask"] for _ in range(200)]
    assert 0.35 < np.mean(held) < 0.65
    binary = (mask > 0).astype(np.uint8)
    assert all(crop(image=image, mask=binary)["mask"].any() for _ in range(50))
    empty = crop(image=image, mask=np.zeros_like(mask))["mask"]  # no defect: a random crop
    assert empty.shape == (32, 32) and not empty.any()


@pytest.mark.parametrize("representation", ["shading", "shading+albedo", "intensity"])
def test_crops_are_the_model_input_of_the_whole_layer(tiny_prepared, representation):
    import albumentations as A

    from training.inference.preprocess import model_channels

    records = load_split(tiny_prepared, "train", "truth")
    config = ModelConfig(representation=representation, mean=(0.3, 0.4, 0.5), std=(0.1, 0.2, 0.3))
    whole = TrainingCrops(records, config, A.Compose([A.RandomCrop(64, 64)]))  # a crop the size of the layer
    expected = model_channels(records[0].stack, config)
    assert whole[0]["image"].shape == (config.in_channels, 64, 64)
    np.testing.assert_allclose(whole[0]["image"].numpy(), expected, atol=1e-2 * np.abs(expected).max())  # float16
    np.testing.assert_array_equal(whole[0]["mask"][0].numpy(), records[0].label)


def test_light_symmetry_permutes_channels_with_the_mirror():
    stack = np.zeros((4, 4, 3), np.float32)
    stack[0, :, 1] = 1.0  # top row bright in channel 1 only
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1
    transform = LightSymmetry((0.0, 120.0, 240.0), p=1.0)
    outputs = set()
    for seed in range(12):
        transform.set_random_seed(seed)
        out = transform(image=stack, mask=mask)
        if out["mask"][3, 0] == 1:  # mirrored top <-> bottom: channels 1 and 2 swap
            assert out["image"][3, :, 2].all() and not out["image"][..., 1].any()
            outputs.add("mirror")
        else:
            np.testing.assert_array_equal(out["image"], stack)
            outputs.add("identity")
    assert outputs == {"mirror", "identity"}


def test_input_jitter_differs_between_channels():
    image = np.ones((32, 32, 4), np.float32)
    jitter = InputJitter(noise_std=(0.0, 0.0), p=1.0)
    jitter.set_random_seed(3)
    out = jitter(image=image)["image"]
    means = out.reshape(-1, 4).mean(axis=0)
    assert out.dtype == np.float32 and np.ptp(means) > 0.01 and ((means > 0.7) & (means < 1.3)).all()


def test_light_symmetry_moves_extra_channels_without_permuting_them():
    stack = np.zeros((4, 4, 4), np.float32)
    stack[0, 0, 3] = 1.0  # the albedo channel of shading+albedo
    transform = LightSymmetry((0.0, 120.0, 240.0), p=1.0)
    for seed in range(8):
        transform.set_random_seed(seed)
        out = transform(image=stack, mask=np.zeros((4, 4), np.uint8))["image"]
        assert out[..., 3].sum() == 1.0 and (out[0, 0, 3] == 1.0 or out[3, 0, 3] == 1.0)
