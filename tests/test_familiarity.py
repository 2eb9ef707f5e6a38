"""Whether a layer is like the training layers: its capture statistics, their training range, and the rule."""

import numpy as np
import pytest

from tests.images_for_tests import lit_layer
from training.inference import familiarity
from training.inference.config import REPRESENTATIONS, ModelConfig
from training.inference.familiarity import (
    MAX_FLAGGED_SHARE,
    STATISTICS,
    assess,
    layer_statistics,
    statistic_names,
    statistics_range,
    unfamiliar,
)

CONFIG = ModelConfig()
TRAINING = [lit_layer(seed, level=0.45 + 0.01 * (seed % 3 - 1)) for seed in range(8)]  # one camera setting
RANGES = statistics_range(TRAINING, CONFIG)


def brighter(stack: np.ndarray, factor: float) -> np.ndarray:
    full = np.iinfo(stack.dtype).max
    return np.clip(np.round(stack * float(factor)), 0, full).astype(stack.dtype)


def gamma(stack: np.ndarray, exponent: float) -> np.ndarray:
    full = np.iinfo(stack.dtype).max
    return np.round(full * (stack / full) ** exponent).astype(stack.dtype)


def named(reasons: list[str]) -> set[str]:
    """The statistics (or 'flagged share') that the reasons name: each reason starts with '<name>: '."""
    return {reason.split(":")[0] for reason in reasons}


def test_every_statistic_has_one_name_and_its_row_in_the_module_table():
    statistics = layer_statistics(TRAINING[0], CONFIG)
    assert tuple(statistics) == statistic_names(3)
    assert statistic_names(3)[:3] == ("exposure_0", "exposure_1", "exposure_2")
    table = familiarity.__doc__
    for name in STATISTICS:
        shown = f"`{name}_<k>`" if name == familiarity.PER_LIGHT else f"`{name}`"
        assert f"| {shown} |" in table, name
    assert set(RANGES) == set(statistics) and all(low <= high for low, high in RANGES.values())


def test_a_layer_of_the_same_camera_setting_is_familiar():
    layer = lit_layer(seed=100, level=0.45)  # not one of the training layers
    assert unfamiliar(layer_statistics(layer, CONFIG), RANGES) == []
    answer = assess(layer, CONFIG.replace(input_ranges=RANGES), flagged_share=0.01)
    assert answer.familiar and answer.reasons == () and answer.statistics_checked
    assert answer.statistics == layer_statistics(layer, CONFIG)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: brighter(s, 1.8), {"exposure_0", "exposure_1", "exposure_2", "saturated"}),
        (lambda s: gamma(s, 2.5), {"exposure_0", "exposure_1", "exposure_2", "contrast"}),
        (lambda s: brighter(s, 0.15), {"exposure_0", "exposure_1", "exposure_2"}),
    ],
    ids=["1.8x brighter, saturating", "gamma 2.5", "a seventh of the light"],
)
def test_a_changed_camera_is_named_with_what_to_check(change, expected):
    statistics = layer_statistics(change(lit_layer(seed=100)), CONFIG)
    reasons = unfamiliar(statistics, RANGES)
    assert expected <= named(reasons), reasons
    assert all("trained on" in r and ": check " in r for r in reasons)
    exposure = next(r for r in reasons if r.startswith("exposure_1:"))
    low, high = RANGES["exposure_1"]
    assert f"median level {statistics['exposure_1']:.2f} of full scale, trained on {low:.2f}-{high:.2f}" in exposure


def test_the_margin_is_half_the_width_plus_the_floor():
    low, high = RANGES["exposure_0"]
    margin = familiarity.MARGIN_OF_WIDTH * (high - low) + STATISTICS["exposure"].floor
    statistics = layer_statistics(TRAINING[0], CONFIG)
    inside = {**statistics, "exposure_0": high + 0.99 * margin}
    outside = {**statistics, "exposure_0": high + 1.01 * margin}
    assert unfamiliar(inside, RANGES) == []
    assert named(unfamiliar(outside, RANGES)) == {"exposure_0"}


def test_the_flagged_share_rule_applies_with_or_without_ranges():
    statistics = layer_statistics(brighter(lit_layer(seed=100), 1.8), CONFIG)
    assert unfamiliar(statistics, None, flagged_share=0.05) == []  # a model without ranges judges no statistic
    [reason] = unfamiliar(statistics, None, flagged_share=MAX_FLAGGED_SHARE + 0.01)
    assert reason.startswith("flagged share: ") and "check the camera and lights" in reason
    assert unfamiliar(statistics, None, flagged_share=MAX_FLAGGED_SHARE) == []  # the limit itself is allowed
    answer = assess(lit_layer(seed=100), CONFIG, flagged_share=0.9)
    assert not answer.familiar and not answer.statistics_checked and named(list(answer.reasons)) == {"flagged share"}


def test_the_range_is_the_1st_to_99th_percentile_over_many_layers_and_min_max_over_few():
    levels = np.linspace(0.2, 0.6, familiarity.PERCENTILE_LAYERS)
    many = [lit_layer(seed=0, size=32, level=float(level)) for level in levels]
    low, high = statistics_range(many, CONFIG)["exposure_0"]
    exposures = [layer_statistics(s, CONFIG)["exposure_0"] for s in many]
    assert min(exposures) < low < high < max(exposures)
    assert statistics_range(many[:5], CONFIG)["exposure_0"] == (min(exposures[:5]), max(exposures[:5]))
    with pytest.raises(ValueError, match="no training layers"):
        statistics_range([], CONFIG)


@pytest.mark.parametrize("representation", list(REPRESENTATIONS))
def test_statistics_for_every_representation_and_bit_depth(representation):
    config = ModelConfig(representation=representation)
    eight, sixteen = lit_layer(seed=3), lit_layer(seed=3, dtype=np.uint16)
    a, b = layer_statistics(eight, config), layer_statistics(sixteen, config)
    assert a["exposure_0"] == pytest.approx(b["exposure_0"], abs=0.01)  # a share of full scale, whatever the depth
    assert 0.0 <= a["input_tail"] <= 1.0 and a["saturated"] == 0.0 and a["black"] == 0.0
    black = eight.copy()
    black[:, :, 2] = 0  # a light that did not fire
    assert layer_statistics(black, config)["black"] == pytest.approx(1 / 3, abs=1e-6)
    with pytest.raises(ValueError, match="one image per light"):
        layer_statistics(eight[:, :, :2], config)


def test_input_ranges_travel_in_the_model_config():
    config = CONFIG.replace(input_ranges=RANGES)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(CONFIG.to_dict()).input_ranges is None
