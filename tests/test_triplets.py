import shutil

import cv2
import numpy as np
import pytest

from training.preparation.triplets import Dropped, LoadedTriplet, Triplet, group_files, load_triplet


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def textured(seed, shape=(48, 48), dtype=np.uint8, level=100):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, 10, shape), 0, np.iinfo(dtype).max).astype(dtype)


def good_triplet(folder, layer_id, seed=0, ext=".png"):
    for k in range(3):
        write(folder / f"{layer_id}_a{k}{ext}", textured(seed * 3 + k))


def test_group_files_names_every_file_that_is_not_part_of_a_triplet(tmp_path):
    good_triplet(tmp_path, "L1")
    good_triplet(tmp_path, "L2", seed=1, ext=".tif")
    write(tmp_path / "L3_a0.png", textured(9))  # incomplete
    write(tmp_path / "L3_a1.png", textured(10))
    good_triplet(tmp_path, "L4", seed=2)
    write(tmp_path / "L4_a1.bmp", textured(11))  # two files for one light
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "L5_a3.png").write_bytes(b"x")  # no fourth light
    (tmp_path / "subfolder").mkdir()
    triplets, dropped = group_files(tmp_path)
    assert [t.layer_id for t in triplets] == ["L1", "L2"]
    reasons = {d.name: d.reason for d in dropped}
    assert reasons == {
        "notes.txt": "unrecognised_name",
        "L5_a3.png": "unrecognised_name",
        "L3": "incomplete_triplet",
        "L4": "ambiguous_angle",
    }
    assert "a2" in next(d.detail for d in dropped if d.name == "L3")


def test_group_files_needs_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        group_files(tmp_path / "missing")


def broken(tmp_path, case):
    good_triplet(tmp_path, "L")
    a0, a1, a2 = (tmp_path / f"L_a{k}.png" for k in range(3))
    if case == "unreadable":
        a1.write_bytes(a1.read_bytes()[:50])
    elif case == "empty":
        a2.write_bytes(b"")
    elif case == "size_mismatch":
        write(a2, textured(5, shape=(48, 40)))
    elif case == "bit_depth_mismatch":
        write(a2, textured(5, dtype=np.uint16, level=30000))
    elif case == "blank":
        write(a0, np.full((48, 48), 3, np.uint8))
    elif case == "saturated":
        image = textured(6)
        image[:20] = 255
        write(a1, image)
    elif case == "identical_images":
        shutil.copy(a0, a2)
    return Triplet("L", (a0, a1, a2))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unreadable", "unreadable"),
        ("empty", "unreadable"),
        ("size_mismatch", "size_mismatch"),
        ("bit_depth_mismatch", "bit_depth_mismatch"),
        ("blank", "blank"),
        ("saturated", "saturated"),
        ("identical_images", "identical_images"),
    ],
)
def test_load_triplet_drops_unusable_layers_with_the_reason(tmp_path, case, reason):
    result = load_triplet(broken(tmp_path, case))
    assert isinstance(result, Dropped)
    assert result.reason == reason and result.name == "L" and result.detail


def test_load_triplet_stacks_channels_in_light_order(tmp_path):
    good_triplet(tmp_path, "L", seed=4)
    triplets, _ = group_files(tmp_path)
    result = load_triplet(triplets[0])
    assert isinstance(result, LoadedTriplet)
    assert result.stack.shape == (48, 48, 3)
    for k in range(3):
        np.testing.assert_array_equal(result.stack[:, :, k], cv2.imread(str(tmp_path / f"L_a{k}.png"), 0))


def test_twelve_bit_data_in_sixteen_bit_files_is_judged_on_its_own_range(tmp_path):
    for k in range(3):
        write(tmp_path / f"L_a{k}.png", textured(k, level=100).astype(np.uint16) * 16)  # a 12-bit camera
    triplets, _ = group_files(tmp_path)
    assert isinstance(load_triplet(triplets[0]), LoadedTriplet)  # 0..4095 is not "blank" against 65535
    clipped = textured(7, level=100).astype(np.uint16) * 16
    clipped[:24] = 4095
    write(tmp_path / "L_a1.png", clipped)
    result = load_triplet(triplets[0])
    assert isinstance(result, Dropped) and result.reason == "saturated" and "4095" in result.detail
