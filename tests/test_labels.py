import numpy as np
import pytest

from training.preparation.labels import LabelConfig, anomaly_mask, light_votes, vote


def noisy_bed(seed=0, size=96):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(100, 4, (size, size)), 0, 255).astype(np.uint8)


def test_anomaly_mask_finds_bright_and_dark_spots_and_little_on_plain_noise():
    image = noisy_bed()
    assert anomaly_mask(image, LabelConfig()).mean() < 0.02  # a 2.5-sigma threshold lets a few noise blobs through
    image[20:28, 20:28] = 180  # bright
    image[60:68, 60:68] = 20  # dark
    mask = anomaly_mask(image, LabelConfig())
    assert mask[24, 24] and mask[64, 64]
    assert mask.mean() < 0.25  # the spots and the halo the background blur leaves around them, not the whole bed


def test_smooth_illumination_gradient_is_not_an_anomaly():
    ramp = np.tile(np.linspace(60, 200, 96), (96, 1))
    image = np.clip(ramp + np.random.default_rng(1).normal(0, 4, ramp.shape), 0, 255).astype(np.uint8)
    assert anomaly_mask(image, LabelConfig()).mean() < 0.01


@pytest.mark.parametrize(
    ("rule", "expected"), [("and", [0, 0, 0, 1]), ("majority", [0, 0, 1, 1]), ("or", [0, 1, 1, 1])]
)
def test_vote_rules(rule, expected):
    votes = np.array([[0, 1, 2, 3]], np.uint8)
    assert vote(votes, rule).astype(int).tolist() == [expected]


def test_vote_rejects_unknown_rule():
    with pytest.raises(ValueError, match="choose from: and, majority, or"):
        vote(np.zeros((2, 2), np.uint8), "most")


def test_light_votes_counts_lights():
    stack = np.stack([noisy_bed(k) for k in range(3)], axis=-1)
    stack[40:50, 40:50, 0] = 200
    stack[40:50, 40:50, 1] = 200
    votes = light_votes(stack, LabelConfig())
    assert votes[45, 45] == 2 and votes.max() == 2
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        light_votes(stack[:, :, :2], LabelConfig())
