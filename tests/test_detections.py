import base64

import cv2
import numpy as np
import pytest

from training.inference.answer import Scale
from training.inference.classes import DEFECT_CLASSES
from training.inference.postprocess import (
    SEED_PROBABILITY,
    Prediction,
    Regions,
    check_threshold,
    components,
    defect_mask,
    defect_regions,
    detect,
    union_bbox,
)
from training.inference.serialize import to_dict


def probabilities() -> np.ndarray:
    p = np.full((20, 30), 0.1, np.float32)
    p[2:6, 3:9] = 0.9  # 4 x 6 = 24 px
    p[4, 5] = 0.97
    p[10:12, 20:21] = 0.6  # 2 px
    p[15, 25] = 0.5  # exactly at 0.5: counts at threshold 0.5
    return p


def test_mask_compares_at_or_above_the_threshold():
    p = probabilities()
    assert defect_mask(p, 0.5).sum() == 27
    assert defect_mask(p, 0.6).sum() == 26
    assert defect_mask(p, 0.95).sum() == 1


def test_below_even_odds_a_region_counts_only_with_a_confident_pixel():
    p = np.full((20, 30), 0.05, np.float32)
    p[2:8, 2:12] = 0.2  # faint region holding one confident pixel: kept whole
    p[5, 6] = SEED_PROBABILITY
    p[12:18, 15:28] = 0.3  # wide faint region, nowhere confident: dropped
    p[10, 2] = 0.2  # faint speck: dropped
    mask = defect_mask(p, 0.15)
    assert mask[2:8, 2:12].all() and mask.sum() == 60
    assert not detect(np.where(mask, 0.0, p).astype(np.float32), 0.15).defect  # the rest: nothing is a defect
    p[5, 6] = np.nextafter(np.float32(SEED_PROBABILITY), np.float32(0))  # just under even odds: no seed left
    assert not defect_mask(p, 0.15).any()


def test_a_threshold_at_or_above_even_odds_is_a_plain_comparison():
    p = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for threshold in (SEED_PROBABILITY, 0.7):
        np.testing.assert_array_equal(defect_mask(p, threshold), p >= np.float32(threshold))


def test_components_largest_first_with_box_area_and_peak():
    p = probabilities()
    found, total = components(defect_regions(p, 0.5), p)
    assert [c.area_px for c in found] == [24, 2, 1] and total == 3
    assert found[0].bbox == (3, 2, 6, 4)
    assert found[0].max_confidence == pytest.approx(0.97)
    assert found[1].bbox == (20, 10, 1, 2) and found[1].max_confidence == pytest.approx(0.6)


def test_diagonal_neighbours_are_one_component():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = True
    assert components(Regions.of(mask), mask.astype(np.float32))[1] == 1


def test_union_bbox_and_clean_layer():
    p = probabilities()
    assert union_bbox(defect_mask(p, 0.5)) == (3, 2, 23, 14)
    assert union_bbox(np.zeros((4, 4), bool)) is None


def test_summary_fields_and_mask_png_round_trip():
    p = probabilities()
    answer = to_dict(detect(p, 0.5))
    assert answer["defect"] is True
    assert answer["defect_area_px"] == 27
    assert answer["defect_area_pct"] == pytest.approx(100 * 27 / 600, abs=1e-4)
    assert answer["bbox"] == [3, 2, 23, 14]
    assert answer["max_confidence"] == pytest.approx(0.97)
    assert answer["components_total"] == 3
    png = base64.b64decode(answer["mask"]["data"])
    mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (answer["mask"]["width"], answer["mask"]["height"]) == (30, 20)
    np.testing.assert_array_equal(mask == 255, defect_mask(p, 0.5))
    assert set(np.unique(mask)) <= {0, 255}


def test_clean_layer_summary_and_options():
    answer = to_dict(detect(np.full((8, 8), 0.2, np.float32), 0.5, return_mask=False))
    assert answer["defect"] is False and answer["bbox"] is None and answer["components"] == []
    assert "mask" not in answer
    capped = to_dict(detect(probabilities(), 0.5, max_components=1))
    assert len(capped["components"]) == 1 and capped["components_total"] == 3


@pytest.mark.parametrize("value", [0.3, "0.3", "0.30"])
def test_threshold_accepts_numbers_and_numeric_text(value):
    assert check_threshold(value) == pytest.approx(0.3)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.1, "abc", None, float("nan"), ""])
def test_threshold_out_of_range_or_not_a_number_is_refused(value):
    with pytest.raises(ValueError, match="threshold"):
        check_threshold(value)


def test_regions_keep_renumbers_what_stays():
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = mask[10:15, 10:12] = mask[18:20, 0:7] = True
    regions = Regions.of(mask)
    assert regions.count == 3
    kept = regions.keep(np.array([True, True, False, True]))  # drop the second region; row 0 is ignored
    assert kept.count == 2 and set(np.unique(kept.labels)) == {0, 1, 2}
    np.testing.assert_array_equal(kept.mask, mask & (regions.labels != 2))
    np.testing.assert_array_equal(kept.stats[1:], regions.stats[[1, 3]])
    again = Regions.of(kept.mask)  # the same regions as labelling the kept mask afresh
    np.testing.assert_array_equal(again.labels, kept.labels)
    np.testing.assert_array_equal(again.stats[1:], kept.stats[1:])
    assert regions.keep(np.ones(4, bool)) is regions


def test_peaks_and_order_match_a_plain_loop_on_a_noisy_mask():
    rng = np.random.default_rng(3)
    p = rng.random((120, 90)).astype(np.float32)
    mask = defect_mask(p, 0.8)
    found, total = components(defect_regions(p, 0.8), p, limit=50)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    assert total == count - 1 and len(found) == 50
    expected = sorted(
        (
            (int(stats[i, 4]), int(stats[i, 1]), int(stats[i, 0]), round(float(p[labels == i].max()), 4))
            for i in range(1, count)
        ),
        key=lambda t: (-t[0], t[1], t[2]),
    )[:50]
    assert [(c.area_px, c.bbox[1], c.bbox[0], c.max_confidence) for c in found] == expected


def class_prediction() -> Prediction:
    """Two regions: a streak (class 0) at the top left, spatter (class 4) at the right, one pixel of it pit."""
    p = probabilities()
    classes = np.zeros((len(DEFECT_CLASSES), *p.shape), np.float32)
    classes[0] = p  # everything streak ...
    classes[0, 10:12, 20:21], classes[4, 10:12, 20:21] = 0.1, 0.5  # ... but the 2-pixel region: spatter
    classes[0, 15, 25], classes[5, 15, 25] = 0.0, 0.5  # and the single pixel: pit
    return Prediction(p, classes, DEFECT_CLASSES)


def test_each_region_gets_the_class_with_most_of_its_probability():
    found = {c.bbox: c for c in detect(class_prediction(), 0.5).components}
    assert found[(3, 2, 6, 4)].class_name == "recoater_streak" and found[(3, 2, 6, 4)].class_confidence == 1.0
    assert found[(20, 10, 1, 2)].class_name == "spatter"
    assert found[(20, 10, 1, 2)].class_confidence == pytest.approx(0.5 / 0.6, abs=1e-4)
    assert found[(25, 15, 1, 1)].class_name == "pit"


def test_class_summary_lists_every_class_and_ignored_ones_leave_the_decision():
    answer = detect(class_prediction(), 0.5, ignore_classes=("spatter", "pit"))
    summary = {c.name: c for c in answer.class_summary}
    assert list(summary) == list(DEFECT_CLASSES)
    assert (summary["spatter"].components, summary["spatter"].area_px, summary["spatter"].counted) == (1, 2, False)
    assert (summary["recoater_streak"].components, summary["recoater_streak"].area_px) == (1, 24)
    assert summary["swelling"].components == 0 and summary["swelling"].counted
    assert answer.defect_area_px == 24 and answer.components_total == 1 and answer.bbox == (3, 2, 6, 4)
    assert answer.flagged_px == 27 and answer.ignored_classes == ("spatter", "pit")
    right = np.arange(30) >= 20  # only the spatter and the pit
    only_spatter = Prediction(class_prediction().defect * right, class_prediction().classes * right, DEFECT_CLASSES)
    assert not detect(only_spatter, 0.5, ignore_classes=("spatter", "pit")).defect


def test_class_map_mask_holds_each_pixels_class():
    answer = detect(class_prediction(), 0.5, mask_format="classes")
    assert answer.mask.kind == "classes"
    data = cv2.imdecode(np.frombuffer(base64.b64decode(answer.mask.data), np.uint8), cv2.IMREAD_UNCHANGED)
    assert data[3, 4] == 1 and data[10, 20] == 5 and data[15, 25] == 6 and data[0, 0] == 0
    assert detect(class_prediction(), 0.5).mask.kind == "binary"


def test_millimetres_follow_the_pitch_and_are_null_without_one():
    known = detect(probabilities(), 0.5, scale=Scale(25.0, "model", ""))
    assert known.defect_area_mm2 == pytest.approx(27 * 0.025**2) and known.bbox_mm == (0.075, 0.05, 0.575, 0.35)
    assert known.components[0].area_mm2 == pytest.approx(24 * 0.025**2)
    unknown = to_dict(detect(probabilities(), 0.5))
    assert unknown["defect_area_mm2"] is None and unknown["bbox_mm"] is None
    assert unknown["components"][0]["area_mm2"] is None and unknown["scale"]["pitch_um"] is None
    assert "pitch" in unknown["scale"]["note"]
    assert unknown["classes_available"] is False and unknown["class_summary"] == []
    assert unknown["components"][0]["class_name"] is None


def test_class_options_need_a_class_model():
    with pytest.raises(ValueError, match="needs a class model"):
        detect(probabilities(), 0.5, ignore_classes=("spatter",))
    with pytest.raises(ValueError, match="needs a class model"):
        detect(probabilities(), 0.5, mask_format="classes")


def test_a_class_map_never_shows_an_ignored_class():
    prediction = class_prediction()
    prediction.classes[4, 3, 4], prediction.classes[0, 3, 4] = 0.9, 0.05  # one spatter pixel on the streak
    shown = detect(prediction, 0.5, ignore_classes=("spatter",), mask_format="classes")
    data = cv2.imdecode(np.frombuffer(base64.b64decode(shown.mask.data), np.uint8), cv2.IMREAD_UNCHANGED)
    assert data[3, 4] == 1 and 5 not in np.unique(data)  # the streak region's pixel takes its best counted class
    assert detect(prediction, 0.5, mask_format="classes").mask.data != shown.mask.data  # unignored, it shows
