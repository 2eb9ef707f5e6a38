import dataclasses
import json

import numpy as np
import pytest

from training.inference.images import read_png_array
from training.renderer.defects import CLASS_IDS, CLASSES
from training.renderer.surface import SurfaceConfig
from training.renderer.synth import SynthConfig, generate_layer, synthesize

SMALL = SynthConfig(size=96)


def test_flat_defect_free_bed_gives_empty_truth_and_near_identical_images():
    flat = SurfaceConfig(powder_roughness_um=0.0, unevenness_um=0.0, parts_per_layer=(0, 0))
    layer = generate_layer(dataclasses.replace(SMALL, surface=flat, clean_fraction=1.0), seed=3, index=0)
    assert not layer.truth.any()
    assert layer.meta["clean"] and layer.meta["defects"] == []
    relative = [im.astype(np.float64) / im.mean() for im in layer.images]
    for other in relative[1:]:
        assert np.abs(relative[0] - other).mean() < 0.08  # noise, gain drift and fall-off only
    rough = generate_layer(dataclasses.replace(SMALL, clean_fraction=1.0), seed=3, index=0)
    rough_rel = [im.astype(np.float64) / im.mean() for im in rough.images]
    assert np.abs(rough_rel[0] - rough_rel[1]).mean() > 2 * np.abs(relative[0] - relative[1]).mean()


@pytest.mark.parametrize("name", CLASSES)
def test_every_class_appears_with_positive_area_when_asked_for(name):
    config = dataclasses.replace(SMALL, size=128, clean_fraction=0.0).only_classes((name,))
    layer = generate_layer(config, seed=7, index=1)
    area = int((layer.truth == CLASS_IDS[name]).sum())
    assert area > 0
    assert {d["class"] for d in layer.meta["defects"]} == {name}
    assert sum(d["area_px"] for d in layer.meta["defects"]) >= area  # instances may overlap
    for d in layer.meta["defects"]:
        x, y, w, h = d["bbox"]
        assert (layer.truth[y : y + h, x : x + w] == CLASS_IDS[name]).any()


def test_same_seed_same_layer_and_different_seed_different_layer():
    a, b = generate_layer(SMALL, 11, 2), generate_layer(SMALL, 11, 2)
    for x, y in zip([*a.images, a.truth], [*b.images, b.truth], strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.meta == b.meta
    c = generate_layer(SMALL, 12, 2)
    assert not np.array_equal(a.images[0], c.images[0])


def test_files_are_byte_identical_whatever_the_number_of_workers(tmp_path):
    synthesize(SMALL, tmp_path / "one", layers=3, seed=5, workers=1)
    synthesize(SMALL, tmp_path / "two", layers=3, seed=5, workers=2)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").glob("*/*") if p.is_file())
    assert len(files) == 3 * 5  # three images, truth and meta per layer (synth_config.json records timings)
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert not list(tmp_path.rglob("*.tmp"))


def test_layout_metadata_and_sixteen_bit_output(tmp_path):
    config = dataclasses.replace(SMALL, camera=dataclasses.replace(SMALL.camera, bit_depth=16), clean_fraction=0.0)
    synthesize(config, tmp_path, layers=1, seed=0, workers=1)
    images = [read_png_array(tmp_path / "raw" / f"layer_00000_a{k}.png") for k in range(3)]
    assert all(im.dtype == np.uint16 and im.shape == (96, 96) for im in images)
    assert max(int(im.max()) for im in images) > 255
    truth = read_png_array(tmp_path / "truth" / "layer_00000.png")
    meta = json.loads((tmp_path / "meta" / "layer_00000.json").read_text())
    assert truth.dtype == np.uint8 and truth.max() <= len(CLASSES)
    assert meta["pitch_um"] == 25.0 and [lt["azimuth_deg"] for lt in meta["lights"]] == [0.0, 120.0, 240.0]
    assert meta["defects"] and all(set(d) >= {"class", "bbox", "area_px"} for d in meta["defects"])


def test_a_share_of_layers_is_defect_free():
    config = dataclasses.replace(SynthConfig(size=64), clean_fraction=0.5)
    clean = [generate_layer(config, 0, i).meta["clean"] for i in range(16)]
    assert 2 <= sum(clean) <= 14


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": 8}, "at least 32"),
        ({"clean_fraction": 1.5}, "within 0..1"),
        ({"elevation_deg": 95.0}, "between 5 and 85"),
        ({"azimuths_deg": (0.0, 0.0, 90.0)}, "must differ"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SynthConfig(), **change)


def test_config_round_trips_through_json_and_rejects_unknown_keys():
    config = SynthConfig(size=64).only_classes(("pit",))
    assert SynthConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    with pytest.raises(ValueError, match="unknown synth config key"):
        SynthConfig.from_json({"colour": "blue"})
    with pytest.raises(ValueError, match="low <= high"):
        SynthConfig.from_json({"defects": {"pit": {"count": [3, 1]}}})
    assert SynthConfig.from_json({"defects": {"pit": {"probability": 1.0}}}).defects["pit"].probability == 1.0


def test_truth_lines_up_with_where_the_defect_shows_in_the_images():
    import cv2

    flat = SurfaceConfig(powder_roughness_um=0.0, unevenness_um=0.0, parts_per_layer=(0, 0))
    quiet = dataclasses.replace(
        SMALL.camera, bit_depth=16, full_well_e=1e9, read_noise_e=0.0, gain_drift=0.0, misregistration_px=0.0
    )
    config = dataclasses.replace(SMALL, size=128, surface=flat, camera=quiet, clean_fraction=0.0).only_classes(("pit",))
    layer = generate_layer(config, seed=2, index=0)
    change = np.zeros((128, 128))
    for image in layer.images:
        pixels = image.astype(np.float64)
        change += np.abs(pixels - cv2.GaussianBlur(pixels, (0, 0), 8.0))
    change[change < 0.2 * change.max()] = 0
    assert layer.truth.any()
    for instance in layer.meta["defects"]:  # one pit per component; compare centroids near each
        x, y, w, h = instance["bbox"]
        box = np.zeros_like(change, dtype=bool)
        box[max(0, y - 6) : y + h + 6, max(0, x - 6) : x + w + 6] = True
        weights = change * box
        gy, gx = np.nonzero(weights)
        seen = np.average(gx, weights=weights[gy, gx]), np.average(gy, weights=weights[gy, gx])
        truth_ys, truth_xs = np.nonzero(box & (layer.truth > 0))
        assert abs(seen[0] - truth_xs.mean()) < 1.0 and abs(seen[1] - truth_ys.mean()) < 1.0


def test_spatter_near_the_image_border_does_not_crash():
    config = dataclasses.replace(SynthConfig(size=128), clean_fraction=0.0).only_classes(("spatter",))
    for index in (185, 186, 187):
        generate_layer(config, seed=0, index=index)
