import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest

from training.inference.images import read_png_array
from training.preparation.prepare import PrepareConfig, parse_split, prepare, split_of
from training.renderer.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Ten small synthetic layers, plus a duplicate, a broken and an incomplete layer."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(dataclasses.replace(SynthConfig(size=96), clean_fraction=0.3), root, layers=10, seed=1, workers=1)
    raw = root / "raw"
    for k in range(3):
        shutil.copy(raw / f"layer_00001_a{k}.png", raw / f"zcopy_a{k}.png")
        shutil.copy(raw / f"layer_00002_a{k}.png", raw / f"broken_a{k}.png")
    (raw / "broken_a1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.copy(raw / "layer_00003_a0.png", raw / "lonely_a0.png")
    return root


@pytest.fixture(scope="module")
def prepared(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    docs = tmp_path_factory.mktemp("docs")
    report = prepare(synthetic / "raw", out, PrepareConfig(), synthetic / "truth", docs, workers=1, command="CMD")
    return out, docs, report


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_dropped_layer_is_named_with_its_reason(prepared):
    out, _, report = prepared
    dropped = {row["name"]: row["reason"] for row in read_csv(out / "dropped.csv")}
    assert dropped == {"zcopy": "duplicate_layer", "broken": "unreadable", "lonely": "incomplete_triplet"}
    assert report["dropped_by_reason"] == {"duplicate_layer": 1, "incomplete_triplet": 1, "unreadable": 1}
    assert report["kept"] == 10


def test_manifest_images_masks_and_truth(prepared, synthetic):
    out, _, _ = prepared
    rows = read_csv(out / "manifest.csv")
    assert [r["layer_id"] for r in rows] == [f"layer_{i:05d}" for i in range(10)]
    for row in rows:
        stack = read_png_array(out / row["image"])
        assert stack.shape == (96, 96, 3) and stack.dtype == np.uint8
        for k in range(3):  # lossless, channel k = light k
            np.testing.assert_array_equal(
                stack[:, :, k], read_png_array(synthetic / "raw" / f"{row['layer_id']}_a{k}.png")
            )
        mask = read_png_array(out / row["mask"])
        assert set(np.unique(mask)) <= {0, 255}
        assert float(row["defect_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        truth = read_png_array(out / row["truth"])
        np.testing.assert_array_equal(truth, read_png_array(synthetic / "truth" / f"{row['layer_id']}.png"))
        assert row["label_source"] == "heuristic:majority"
        assert row["split"] in {"train", "val", "test"}
        meta = json.loads((synthetic / "meta" / f"{row['layer_id']}.json").read_text())
        assert float(row["pitch_um"]) == pytest.approx(meta["pitch_um"])  # the pitch synth drew for the layer


def test_a_stated_pitch_is_every_layers_and_without_one_real_data_has_none(synthetic, tmp_path):
    raw = tmp_path / "camera"  # real data: a raw folder with no synth meta beside it
    shutil.copytree(synthetic / "raw", raw)
    prepare(raw, tmp_path / "unknown", PrepareConfig(), None, None, workers=1)
    assert {r["pitch_um"] for r in read_csv(tmp_path / "unknown" / "manifest.csv")} == {""}
    report = prepare(raw, tmp_path / "stated", PrepareConfig(pitch_um=22.5), None, None, workers=1)
    assert {r["pitch_um"] for r in read_csv(tmp_path / "stated" / "manifest.csv")} == {"22.5"}
    assert report["pitch_um"] == 22.5


@pytest.mark.parametrize("pitch", [0.0, -3.0, float("nan"), 5000.0])
def test_a_bad_pitch_is_refused(pitch):
    with pytest.raises(ValueError, match="pitch must be above 0"):
        PrepareConfig(pitch_um=pitch)


def test_label_quality_report_is_written_with_the_command(prepared):
    out, docs, report = prepared
    text = (docs / "label_quality.md").read_text()
    assert "CMD" in text and "| `majority` | 2 of 3 |" in text
    assert (docs / "label_quality.png").stat().st_size > 1000
    assert (docs / "label_quality_examples.png").stat().st_size > 1000
    numbers = json.loads((out / "label_quality.json").read_text())
    assert set(numbers["rules"]) == {"and", "majority", "or"}
    densities = [numbers["rules"][r]["label_density"] for r in ("and", "majority", "or")]
    assert densities == sorted(densities)  # more lights needed, fewer pixels labelled
    assert report["label_quality"]["markdown"].endswith("label_quality.md")


def test_without_truth_no_report_and_no_truth_column(synthetic, tmp_path):
    report = prepare(synthetic / "raw", tmp_path / "out", PrepareConfig(vote="or"), None, tmp_path / "docs", workers=1)
    rows = read_csv(tmp_path / "out" / "manifest.csv")
    assert all(r["truth"] == "" and r["label_source"] == "heuristic:or" for r in rows)
    assert "label_quality" not in report and not (tmp_path / "docs").exists()


def test_split_is_deterministic_disjoint_and_close_to_the_fractions():
    ids = [f"build7_layer{i:04d}" for i in range(2000)]
    splits = [split_of(i, (0.7, 0.15, 0.15)) for i in ids]
    assert splits == [split_of(i, (0.7, 0.15, 0.15)) for i in ids]
    counts = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert counts["train"] == pytest.approx(0.7, abs=0.04) and counts["val"] == pytest.approx(0.15, abs=0.03)


@pytest.mark.parametrize(("text", "message"), [("0.7,0.3", "three fractions"), ("a,b,c", "look like")])
def test_parse_split_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        parse_split(text)


def test_config_rejects_bad_split_and_vote():
    with pytest.raises(ValueError, match="summing to 1"):
        PrepareConfig(split=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="unknown vote rule"):
        PrepareConfig(vote="two")


def test_bad_truth_drops_its_layer_but_not_a_valid_twin(tmp_path):
    import cv2

    synthesize(SynthConfig(size=64), tmp_path / "s", layers=2, seed=3, workers=1)
    raw, truth = tmp_path / "s" / "raw", tmp_path / "s" / "truth"
    for k in range(3):
        shutil.copy(raw / f"layer_00000_a{k}.png", raw / f"twin_a{k}.png")
    shutil.copy(truth / "layer_00000.png", truth / "twin.png")
    cv2.imwrite(str(truth / "layer_00000.png"), np.zeros((32, 32), np.uint8))  # wrong size
    cv2.imwrite(str(truth / "layer_00001.png"), np.zeros((64, 64, 3), np.uint8))  # colour
    report = prepare(raw, tmp_path / "out", PrepareConfig(), truth, None, workers=1)
    dropped = {row["name"]: (row["reason"], row["detail"]) for row in read_csv(tmp_path / "out" / "dropped.csv")}
    assert dropped["layer_00000"][0] == "truth_mismatch" and "32x32" in dropped["layer_00000"][1]
    assert dropped["layer_00001"][0] == "truth_mismatch" and "channels" in dropped["layer_00001"][1]
    assert [r["layer_id"] for r in read_csv(tmp_path / "out" / "manifest.csv")] == ["twin"]
    assert report["kept"] == 1
