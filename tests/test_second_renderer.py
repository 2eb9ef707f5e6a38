"""The second renderer: deterministic, independent of training, with truth where the images change."""

import ast
import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bench import second_renderer
from bench.second_renderer import CLASSES, SecondRendererConfig, render_layer, render_set

SMALL = SecondRendererConfig(size=96)


def test_same_arguments_give_the_same_bytes():
    first, again = render_layer(SMALL, 3, 1), render_layer(SMALL, 3, 1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first[0], again[0], strict=True))
    assert first[1].tobytes() == again[1].tobytes()
    assert json.dumps(first[2]) == json.dumps(again[2])


@pytest.mark.parametrize("seed, index", [(3, 2), (4, 1)])
def test_another_layer_or_seed_differs(seed, index):
    base = render_layer(SMALL, 3, 1)[0][0]
    assert base.tobytes() != render_layer(SMALL, seed, index)[0][0].tobytes()


@pytest.mark.parametrize("bit_depth, dtype", [(8, np.uint8), (16, np.uint16)])
def test_bit_depth_sets_the_dtype(bit_depth, dtype):
    images, truth, meta = render_layer(dataclasses.replace(SMALL, bit_depth=bit_depth), 0, 0)
    assert [im.dtype for im in images] == [dtype] * 3 and truth.dtype == np.uint8
    assert all(im.shape == (96, 96) for im in [*images, truth])
    assert len({im.tobytes() for im in images}) == 3  # each light shades differently
    assert int(max(im.max() for im in images)) > (1 << bit_depth) // 4  # the full range is used, not 8 bits in 16
    assert meta["bit_depth"] == bit_depth


def test_its_truth_ids_are_the_ones_prepare_and_evaluation_read():
    from training.inference.classes import CLASS_IDS

    assert {name: CLASSES.index(name) + 1 for name in CLASSES} == CLASS_IDS  # typed apart, so it stays independent


@pytest.mark.parametrize("index", range(6))
def test_truth_classes_and_boxes_match_the_record(index):
    _, truth, meta = render_layer(SecondRendererConfig(size=128, clean_fraction=0.0), 5, index)
    assert set(np.unique(truth)) <= set(range(7))
    assert meta["defects"] and not meta["clean"]
    for defect in meta["defects"]:
        x, y, w, h = defect["bbox"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 128 and y + h <= 128
        assert defect["class_id"] == CLASSES.index(defect["class"]) + 1
        assert (truth[y : y + h, x : x + w] == defect["class_id"]).any()
        assert 1 <= defect["area_px"] <= w * h
    assert set(np.unique(truth)) - {0} == {d["class_id"] for d in meta["defects"]}


def test_clean_layers_have_an_empty_truth_map():
    for index in range(3):
        _, truth, meta = render_layer(dataclasses.replace(SMALL, clean_fraction=1.0), 0, index)
        assert not truth.any() and meta["clean"] and meta["defects"] == []


def test_the_clean_fraction_is_about_right():
    config = dataclasses.replace(SecondRendererConfig(size=64, parts=(0, 0)), clean_fraction=0.5)
    clean = sum(render_layer(config, 1, i)[2]["clean"] for i in range(30))
    assert 7 <= clean <= 23


@pytest.mark.parametrize("name", CLASSES)
def test_a_defect_changes_the_images_where_its_truth_is(name):
    """The same layer with one defect and with none: the images differ far more inside the truth than outside."""
    config = SecondRendererConfig(size=128, classes=(name,), defects=(1, 1), parts=(2, 3))
    with_defect, truth, meta = render_layer(dataclasses.replace(config, clean_fraction=0.0), 7, 0)
    without, _, _ = render_layer(dataclasses.replace(config, clean_fraction=1.0), 7, 0)
    assert [d["class"] for d in meta["defects"]] == [name]
    diff = np.mean([np.abs(a.astype(float) - b) for a, b in zip(with_defect, without, strict=True)], axis=0)
    inside, outside = diff[truth > 0].mean(), diff[truth == 0].mean()
    assert inside > 2.0 and inside > 4 * outside, (inside, outside)


@pytest.mark.parametrize("elevation", [15.0, 30.0, 60.0])
def test_bare_powder_is_exposed_plausibly(elevation):
    config = SecondRendererConfig(size=128, elevation_deg=elevation, parts=(0, 0), clean_fraction=1.0)
    for index in range(2):
        images, _, meta = render_layer(config, 2, index)
        for image in images:
            level = image.mean() / 255
            assert 0.35 <= level <= 0.85, (level, meta["appearance"])
            assert (image == 255).mean() < 0.05


def test_whole_layers_are_not_saturated():
    for index in range(3):
        images, _, _ = render_layer(SecondRendererConfig(size=128, bit_depth=16), 9, index)
        assert all((im == 65535).mean() < 0.05 and 0.2 < im.mean() / 65535 < 0.85 for im in images)


def test_parts_are_brighter_or_darker_as_drawn():
    config = SecondRendererConfig(size=128, parts=(2, 3), clean_fraction=1.0)
    looks = [render_layer(config, 0, i)[2]["appearance"] for i in range(8)]
    assert {a["part_appearance"] for a in looks} == {"brighter", "darker"}
    for a in looks:
        assert (a["part_to_powder_brightness"] > 1.0) == (a["part_appearance"] == "brighter"), a


@pytest.mark.parametrize(
    "field, value",
    [
        ("size", 32),
        ("pitch_um", 0.0),
        ("azimuths_deg", (0.0, 0.0, 120.0)),
        ("azimuths_deg", (0.0, 120.0)),
        ("elevation_deg", 90.0),
        ("elevation_deg", 2.0),
        ("bit_depth", 12),
        ("clean_fraction", 1.5),
        ("exposure", (0.7, 0.5)),
        ("oversample", 0),
        ("parts", (3, 1)),
        ("defects", (0, 2)),
        ("classes", ("crack",)),
    ],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SecondRendererConfig.{field} must be"):
        SecondRendererConfig(**{field: value})


def test_the_module_imports_nothing_from_training(repo_root):
    tree = ast.parse((repo_root / "bench" / "second_renderer.py").read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    tops = {m.split(".")[0] for m in modules}
    assert tops <= set(sys.stdlib_module_names) | {"numpy", "cv2"}, tops
    check = "import sys, bench.second_renderer; print([m for m in sys.modules if m.split('.')[0] == 'training'])"
    result = subprocess.run([sys.executable, "-E", "-s", "-c", check], cwd=repo_root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_render_set_writes_the_same_bytes_twice(tmp_path):
    config = SecondRendererConfig(size=64)
    summaries = [render_set(config, tmp_path / name, layers=2, seed=1, start=4, command="CMD") for name in "ab"]
    assert summaries[0] == summaries[1] and summaries[0]["layers"] == 2
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * 5 + 1 and not [f for f in files if f.name.endswith(".tmp")]
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    record = json.loads((tmp_path / "a" / "render_config.json").read_text())
    assert SecondRendererConfig(**record["config"]) == config and record["command"] == "CMD"


def test_the_command_writes_the_layout(tmp_path, repo_root):
    out = tmp_path / "second"
    command = [sys.executable, "-m", "bench", "second-renderer", "--out", str(out), "--layers", "3", "--seed", "2",
               "--size", "128", "--lights", "10,130,250", "--elevation", "40", "--bit-depth", "16"]  # fmt: skip
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip().splitlines()) == 1 and str(out) in result.stdout
    import cv2

    for i in range(3):
        lid = f"layer_{i:05d}"
        images = [cv2.imread(str(out / "raw" / f"{lid}_a{k}.png"), cv2.IMREAD_UNCHANGED) for k in range(3)]
        assert all(im.dtype == np.uint16 and im.shape == (128, 128) for im in images)
        truth = cv2.imread(str(out / "truth" / f"{lid}.png"), cv2.IMREAD_UNCHANGED)
        assert truth.dtype == np.uint8 and truth.shape == (128, 128)
        meta = json.loads((out / "meta" / f"{lid}.json").read_text())
        assert meta["layer_id"] == lid and meta["renderer"] == "second" and meta["index"] == i and meta["seed"] == 2
        assert [light["azimuth_deg"] for light in meta["lights"]] == [10.0, 130.0, 250.0]
        assert {light["elevation_deg"] for light in meta["lights"]} == {40.0}
        assert {"exposure_level", "tone", "light_intensity", "part_appearance"} <= set(meta["appearance"])
    record = json.loads((out / "render_config.json").read_text())
    assert record["config"]["azimuths_deg"] == [10.0, 130.0, 250.0] and record["config"]["size"] == 128
    assert record["command"].startswith("python -m bench second-renderer --out")


@pytest.mark.parametrize(
    "extra, words",
    [(["--elevation", "95"], "elevation_deg"), (["--lights", "0,120"], "--lights"), (["--layers", "0"], "layers")],
)
def test_the_command_refuses_bad_arguments(tmp_path, repo_root, extra, words):
    command = [sys.executable, "-m", "bench", "second-renderer", "--out", str(tmp_path), "--layers", "1", *extra]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and words in result.stderr, result.stderr


def test_config_rebuilds_from_its_json_form():
    config = SecondRendererConfig(azimuths_deg=[0, 90, 180], classes=["pit"])
    assert config.azimuths_deg == (0, 90, 180) and config.classes == ("pit",)
    assert SecondRendererConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    assert second_renderer.parse_azimuths("0, 120,240") == (0.0, 120.0, 240.0)


@pytest.mark.parametrize("name", ["pit", "swelling", "recoater_streak"])
@pytest.mark.parametrize("seed", [0, 1])
def test_truth_is_the_footprint_at_half_the_peak_change(name, seed):
    """At 10 um pixels, the truth spans the drawn diameter (pit, swelling) or the drawn width (streak)."""
    config = SecondRendererConfig(size=128, pitch_um=10.0, classes=(name,), defects=(1, 1), clean_fraction=0.0)
    _, truth, meta = render_layer(config, seed, 0)
    (defect,) = meta["defects"]
    if name == "recoater_streak":
        _, y, _, h = defect["bbox"]
        assert y + h == 128  # runs to the bottom edge
        widths = (truth[y + h // 2 :] > 0).sum(axis=1)
        assert abs(widths.mean() - defect["params"]["width_um"] / 10) < 1.0
    else:
        expected = math.pi * (defect["params"]["diameter_um"] / 20) ** 2
        assert abs(defect["area_px"] / expected - 1) < 0.15, (defect["area_px"], expected)


@pytest.mark.parametrize("seed", [1, 4])  # a ridge, a groove
def test_a_streak_is_lit_on_the_flank_that_faces_the_light(seed):
    """Azimuth 0 is a light beyond the right edge, 180 beyond the left: a ridge is bright on the side facing it."""
    config = SecondRendererConfig(size=128, azimuths_deg=(0, 90, 180), classes=("recoater_streak",), defects=(1, 1),
                                  parts=(0, 0), clean_fraction=0.0)  # fmt: skip
    images, _, meta = render_layer(config, seed, 0)
    (defect,) = meta["defects"]
    centre, rows = int(defect["params"]["x_um"] / 25), slice(defect["bbox"][1] + defect["bbox"][3] // 2, None)
    left_minus_right = [
        im[rows, centre - 3 : centre].mean() - im[rows, centre + 1 : centre + 4].mean() for im in images
    ]
    ridge = defect["params"]["height_um"] > 0
    assert (left_minus_right[0] < -5) == ridge and (left_minus_right[2] > 5) == ridge, left_minus_right
    assert abs(left_minus_right[1]) < 5  # lit along the streak: both flanks alike


def test_the_side_nearer_each_light_is_brighter():
    config = SecondRendererConfig(size=128, azimuths_deg=(0, 90, 180), parts=(0, 0), clean_fraction=1.0)
    right, top, left = (im.astype(float) for im in render_layer(config, 0, 0)[0])
    assert right[:, 86:].mean() > right[:, :42].mean() + 3
    assert top[:42].mean() > top[86:].mean() + 3
    assert left[:, :42].mean() > left[:, 86:].mean() + 3
