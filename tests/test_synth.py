import dataclasses
import hashlib
import json
import re

import cv2
import numpy as np
import pytest

from training.cli import main
from training.inference.classes import CLASS_IDS, DEFECT_CLASSES
from training.inference.images import read_png_array
from training.renderer.physics import PhysicsRanges, parse_range
from training.renderer.surface import Part, SurfaceConfig, packed_grains, rasterize_parts
from training.renderer.synth import SynthConfig, generate_layer, synthesize

SMALL = SynthConfig(size=96)  # randomized physics, the default
FIXED = SynthConfig(size=96, randomize=False)  # the fixed settings: for tests that set the surface or the camera


def test_flat_defect_free_bed_gives_empty_truth_and_near_identical_images():
    flat = SurfaceConfig(powder_roughness_um=0.0, unevenness_um=0.0, parts_per_layer=(0, 0))
    layer = generate_layer(dataclasses.replace(FIXED, surface=flat, clean_fraction=1.0), seed=3, index=0)
    assert not layer.truth.any()
    assert layer.meta["clean"] and layer.meta["defects"] == []
    relative = [im.astype(np.float64) / im.mean() for im in layer.images]
    for other in relative[1:]:
        assert np.abs(relative[0] - other).mean() < 0.08  # noise, gain drift and fall-off only
    rough = generate_layer(dataclasses.replace(FIXED, clean_fraction=1.0), seed=3, index=0)
    rough_rel = [im.astype(np.float64) / im.mean() for im in rough.images]
    assert np.abs(rough_rel[0] - rough_rel[1]).mean() > 2 * np.abs(relative[0] - relative[1]).mean()


@pytest.mark.parametrize("name", DEFECT_CLASSES)
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
    config = dataclasses.replace(FIXED, camera=dataclasses.replace(FIXED.camera, bit_depth=16), clean_fraction=0.0)
    synthesize(config, tmp_path, layers=1, seed=0, workers=1)
    images = [read_png_array(tmp_path / "raw" / f"layer_00000_a{k}.png") for k in range(3)]
    assert all(im.dtype == np.uint16 and im.shape == (96, 96) for im in images)
    assert max(int(im.max()) for im in images) > 255
    truth = read_png_array(tmp_path / "truth" / "layer_00000.png")
    meta = json.loads((tmp_path / "meta" / "layer_00000.json").read_text())
    assert truth.dtype == np.uint8 and truth.max() <= len(DEFECT_CLASSES)
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
    flat = SurfaceConfig(powder_roughness_um=0.0, unevenness_um=0.0, parts_per_layer=(0, 0))
    quiet = dataclasses.replace(
        FIXED.camera, bit_depth=16, full_well_e=1e9, read_noise_e=0.0, gain_drift=0.0, misregistration_px=0.0
    )
    config = dataclasses.replace(FIXED, size=128, surface=flat, camera=quiet, clean_fraction=0.0).only_classes(("pit",))
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
    # These indices put spatter at the border with the fixed 25 um pitch; randomized, they land elsewhere.
    config = dataclasses.replace(FIXED, size=128, clean_fraction=0.0).only_classes(("spatter",))
    for index in (185, 186, 187):
        generate_layer(config, seed=0, index=index)


def _digest(layer) -> str:
    h = hashlib.sha256()
    for array in [*layer.images, layer.truth]:
        h.update(array.tobytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("config", "seed", "index", "digest"),
    [
        (
            SynthConfig(size=64, randomize=False),
            0,
            1,
            "9232fc622ec6affa246aff3b4ba6ce661ff5bacfecf97570feb410d899495da0",
        ),
        (
            SynthConfig(size=64, randomize=False, clean_fraction=0.0),
            3,
            2,
            "d92683160212f287edcc20a02dce22608c02a3e5d59f23dcb4ca4ce2ec020761",
        ),
    ],
)
def test_randomize_off_renders_the_bytes_of_the_fixed_renderer(config, seed, index, digest):
    """Digests of images + truth taken from the renderer before randomised physics existed."""
    assert _digest(generate_layer(config, seed, index)) == digest


def test_randomized_layers_draw_their_own_physics_within_the_ranges():
    ranges = PhysicsRanges()
    config = SynthConfig(size=64)
    metas = [generate_layer(config, seed=0, index=i).meta for i in range(4)]
    assert len({json.dumps(m["physics"], sort_keys=True) for m in metas}) == 4
    for meta in metas:
        physics = meta["physics"]
        assert set(physics) == {f.name for f in dataclasses.fields(PhysicsRanges)}
        for name, value in physics.items():
            low, high = getattr(ranges, name)
            for v in value if isinstance(value, list) else [value]:
                assert low - 1e-4 <= v <= high + 1e-4, (name, v)
        assert meta["pitch_um"] == physics["pitch_um"]
        for light, nominal, error, jitter, intensity in zip(
            meta["lights"],
            config.azimuths_deg,
            physics["azimuth_error_deg"],
            physics["elevation_jitter_deg"],
            physics["light_intensity"],
            strict=True,
        ):
            assert light["azimuth_deg"] == pytest.approx((nominal + error) % 360.0, abs=2e-4)
            assert light["elevation_deg"] == pytest.approx(physics["elevation_deg"] + jitter, abs=2e-4)
            assert light["intensity"] == intensity
        assert [e["gradient"] for e in meta["exposures"]] == physics["illumination_gradient"]


def test_randomize_off_records_the_fixed_settings():
    meta = generate_layer(SynthConfig(size=64, randomize=False), seed=0, index=1).meta
    assert meta["physics"]["elevation_deg"] == 30.0 and meta["pitch_um"] == 25.0
    assert meta["physics"]["azimuth_error_deg"] == [0.0] * 3 and meta["physics"]["light_intensity"] == [1.0] * 3
    assert [(lt["azimuth_deg"], lt["elevation_deg"]) for lt in meta["lights"]] == [
        (0.0, 30.0),
        (120.0, 30.0),
        (240.0, 30.0),
    ]


def _fixed(**values: float) -> PhysicsRanges:
    """Default ranges with the named settings collapsed to one value each."""
    return PhysicsRanges(**{name: (v, v) for name, v in values.items()})


def _randomized(size: int = 96, parts: int = 0, **values: float) -> SynthConfig:
    surface = dataclasses.replace(SurfaceConfig(), parts_per_layer=(parts, parts))
    return SynthConfig(size=size, clean_fraction=1.0, surface=surface, physics=_fixed(**values))


@pytest.mark.parametrize("gamma", [0.6, 1.0, 1.5])
def test_exposure_sets_where_flat_powder_lands_whatever_the_response_curve(gamma):
    flat = {"powder_roughness_um": 0.0, "vignetting": 0.0, "illumination_gradient": 0.0, "light_intensity": 1.0}
    low = generate_layer(_randomized(target_level=0.2, response_gamma=gamma, **flat), seed=1, index=0)
    high = generate_layer(_randomized(target_level=0.55, response_gamma=gamma, **flat), seed=1, index=0)
    assert low.meta["exposure_cut"] == high.meta["exposure_cut"] == 1.0  # nothing near saturation
    levels = [np.median(np.stack(layer.images)) / 255 for layer in (low, high)]
    assert 0.2 <= levels[0] <= 0.2 * 1.25  # flat matte powder lands at the level; its faint sheen adds a little
    assert levels[1] / levels[0] == pytest.approx(0.55 / 0.2, rel=0.06)
    assert all(h.mean() > 2 * lo.mean() for h, lo in zip(high.images, low.images, strict=True))


def test_auto_exposure_keeps_a_bright_rough_layer_from_saturating():
    harsh = {"target_level": 0.75, "elevation_deg": 15.0, "powder_roughness_um": 5.0, "response_gamma": 0.6}
    layer = generate_layer(_randomized(**harsh), seed=6, index=0)
    assert layer.meta["exposure_cut"] < 0.9 and layer.meta["physics"]["target_level"] == 0.75
    assert max(float(np.mean(im == 255)) for im in layer.images) < 0.03  # glints and sheen only


def test_light_intensity_brightens_its_own_image():
    quiet = {"vignetting": 0.0, "illumination_gradient": 0.0, "target_level": 0.4}
    dim = generate_layer(_randomized(light_intensity=0.75, **quiet), seed=2, index=0)
    bright = generate_layer(_randomized(light_intensity=1.25, **quiet), seed=2, index=0)
    assert dim.meta["exposure_cut"] == bright.meta["exposure_cut"] == 1.0
    for d, b in zip(dim.images, bright.images, strict=True):
        assert b.mean() / d.mean() == pytest.approx(1.25 / 0.75, rel=0.1)


def test_optical_blur_removes_fine_detail():
    def detail(layer):
        return np.mean([np.abs(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F)).mean() for im in layer.images])

    sharp = generate_layer(_randomized(blur_px=0.0, read_noise_e=2.0), seed=3, index=0)
    blurred = generate_layer(_randomized(blur_px=1.2, read_noise_e=2.0), seed=3, index=0)
    assert detail(blurred) < 0.6 * detail(sharp)


def test_packed_grains_give_the_powder_sharper_pixel_scale_texture_than_a_smooth_field():
    def detail(layer):  # high-pass energy against the layer's level: what exposure does cancels
        return np.mean(
            [np.abs(cv2.Laplacian(im.astype(np.float32), cv2.CV_32F)).mean() / im.mean() for im in layer.images]
        )

    settings = {"blur_px": 0.0, "read_noise_e": 2.0, "powder_roughness_um": 8.0, "particle_diameter_um": 30.0}
    smooth = generate_layer(_randomized(powder_particles=0.0, **settings), seed=3, index=0)
    grains = generate_layer(_randomized(powder_particles=1.0, **settings), seed=3, index=0)
    assert detail(grains) > 1.3 * detail(smooth)


def test_packed_grains_are_a_standardised_field_of_caps_and_gaps():
    field = packed_grains(np.random.default_rng(0), (128, 128), diameter_px=6.0)
    assert abs(field.mean()) < 1e-5 and field.std() == pytest.approx(1.0, abs=1e-4)
    assert (field == field.min()).mean() > 0.05  # gaps between grains sit at one depth


@pytest.mark.parametrize(("powder", "part", "parts_brighter"), [(0.6, 0.3, False), (0.3, 0.8, True)])
def test_parts_are_darker_or_brighter_than_powder_as_their_albedos_say(powder, part, parts_brighter):
    config = _randomized(
        size=128, parts=2, powder_albedo=powder, melted_albedo=part, melted_specular=0.05, elevation_deg=60.0
    )
    layer = generate_layer(config, seed=4, index=0)
    parts = [
        Part(p["kind"], tuple(map(tuple, p.get("vertices", ()))), tuple(p.get("center", (0, 0))),
             tuple(p.get("axes", (0, 0))), p.get("angle_deg", 0.0))
        for p in layer.meta["parts"]
    ]  # fmt: skip
    mask = rasterize_parts(parts, (128, 128), 1).astype(np.uint8)
    inside = cv2.erode(mask, np.ones((7, 7), np.uint8)).astype(bool)
    outside = ~cv2.dilate(mask, np.ones((7, 7), np.uint8)).astype(bool)
    assert inside.sum() > 100 and outside.sum() > 100
    for image in layer.images:
        part_level, powder_level = np.median(image[inside]), np.median(image[outside])
        assert (part_level > 1.2 * powder_level) if parts_brighter else (part_level < 0.8 * powder_level)


def test_pitch_sets_the_size_of_a_defect_in_pixels():
    spec = {"pit": {"probability": 1.0, "count": [1, 1], "size_um": [200.0, 200.0], "height_um": [30.0, 30.0]}}
    areas = {}
    for pitch in (15.0, 40.0):
        config = SynthConfig.from_json(
            {"size": 96, "clean_fraction": 0.0, "defects": spec, "physics": {"pitch_um": [pitch, pitch]}}
        ).only_classes(("pit",))
        layer = generate_layer(config, seed=5, index=0)
        assert layer.meta["pitch_um"] == pitch
        areas[pitch] = layer.meta["defects"][0]["area_px"]
    assert areas[15.0] / areas[40.0] == pytest.approx((40.0 / 15.0) ** 2, rel=0.3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"elevation_deg": (60.0, 15.0)}, "low <= high"),
        ({"elevation_deg": (2.0, 30.0)}, r"elevation_deg must be within \[5, 85\]"),
        ({"pitch_um": (0.0, 30.0)}, "pitch_um must be above 0"),
        ({"target_level": (0.2, 1.5)}, r"target_level must be within \(0, 1\]"),
        ({"read_noise_e": (-1.0, 2.0)}, "read_noise_e must be at least 0"),
        ({"powder_albedo": (0.3,)}, "two finite numbers"),
        ({"blur_px": (0.0, float("nan"))}, "two finite numbers"),
    ],
)
def test_physics_ranges_reject_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        PhysicsRanges(**change)


def test_the_physics_ranges_table_states_the_defaults():
    rows = re.findall(r"^\s*\| (\w+) \| (-?[\d.]+)-(-?[\d.]+)", PhysicsRanges.__doc__ or "", flags=re.MULTILINE)
    stated = {name: (float(low), float(high)) for name, low, high in rows}
    assert stated == {f.name: getattr(PhysicsRanges(), f.name) for f in dataclasses.fields(PhysicsRanges)}


def test_physics_ranges_round_trip_through_json_with_partial_overrides():
    config = SynthConfig(size=64, randomize=False, physics=PhysicsRanges(elevation_deg=(20.0, 40.0)))
    record = json.loads(json.dumps(config.to_json()))
    assert record["randomize"] is False and record["physics"]["elevation_deg"] == [20.0, 40.0]
    assert SynthConfig.from_json(record) == config
    partial = SynthConfig.from_json({"physics": {"pitch_um": [20, 30]}})
    assert partial.randomize and partial.physics == PhysicsRanges(pitch_um=(20.0, 30.0))
    with pytest.raises(ValueError, match="low <= high"):
        SynthConfig.from_json({"physics": {"pitch_um": [30, 20]}})
    with pytest.raises(ValueError, match="in physics"):
        SynthConfig.from_json({"physics": {"colour": [1, 2]}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("40", (40.0, 40.0)), ("20:45", (20.0, 45.0)), ("7.5:85", (7.5, 85.0)), ("30:30", (30.0, 30.0))],
)
def test_parse_range_takes_one_number_or_low_high(text, expected):
    assert parse_range(text, "--elevation", "elevation_deg") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "--elevation takes one number .* or a range LOW:HIGH such as 15:60"),
        ("20:", "--elevation takes one number"),
        ("10:20:30", "--elevation takes one number"),
        ("nan", "--elevation takes one number"),
        ("60:20", "--elevation must be a range with low <= high"),
        ("95", r"--elevation must be within \[5, 85\] degrees above the bed, got '95'"),
    ],
)
def test_parse_range_rejects_bad_text_naming_the_option(text, message):
    with pytest.raises(ValueError, match=message):
        parse_range(text, "--elevation", "elevation_deg")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--elevation", "abc"], "--elevation takes one number"),
        (["--pitch", "40:15"], "--pitch must be a range with low <= high"),
        (["--pitch", "0"], "--pitch must be above 0 micrometres"),
        (["--elevation", "20:40", "--no-randomize"], "with --no-randomize give one number"),
    ],
)
def test_synth_command_refuses_bad_elevation_and_pitch(args, message, tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "synth_config.json").exists()


def _run_synth(tmp_path, *args: str) -> tuple[dict, list[dict]]:
    assert main(["synth", "--out", str(tmp_path), "--layers", "2", "--size", "32", "--workers", "1", *args]) == 0
    record = json.loads((tmp_path / "synth_config.json").read_text())
    return record["config"], [json.loads(p.read_text()) for p in sorted((tmp_path / "meta").glob("*.json"))]


def test_synth_command_fixes_the_elevation_and_sets_the_pitch_range(tmp_path):
    config, metas = _run_synth(tmp_path, "--elevation", "40", "--pitch", "20:30")
    assert config["randomize"] is True and config["elevation_deg"] == 40.0
    assert config["physics"]["elevation_deg"] == [40.0, 40.0] and config["physics"]["pitch_um"] == [20.0, 30.0]
    for meta in metas:
        assert meta["physics"]["elevation_deg"] == 40.0 and 20.0 <= meta["pitch_um"] <= 30.0
        assert all(38.0 <= light["elevation_deg"] <= 42.0 for light in meta["lights"])  # each light's jitter
    assert metas[0]["pitch_um"] != metas[1]["pitch_um"]


def test_synth_command_without_randomize_uses_the_numbers_given(tmp_path):
    config, metas = _run_synth(tmp_path, "--no-randomize", "--elevation", "40", "--pitch", "20")
    assert config["randomize"] is False and (config["elevation_deg"], config["pitch_um"]) == (40.0, 20.0)
    for meta in metas:
        assert meta["pitch_um"] == 20.0 and [light["elevation_deg"] for light in meta["lights"]] == [40.0] * 3


def test_swelling_at_a_corner_outside_the_layer_is_skipped_not_an_error():
    """A part cut by the image's edge can have every corner outside the layer (seed 1 of `make results` met one)."""
    from training.renderer.defects import DEFAULT_SPECS, LayerContext, swelling
    from training.renderer.surface import Part

    outside = Part("polygon", vertices=((-40.0, -40.0), (-30.0, -40.0), (-30.0, -30.0)))
    ctx = LayerContext((64, 64), 12.5, 2, [outside], np.zeros((64, 64), bool), lambda: None)
    assert swelling(np.random.default_rng(0), ctx, DEFAULT_SPECS["swelling"]) == []
