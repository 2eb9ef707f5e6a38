import itertools

import cv2
import numpy as np
import pytest

from training.learning.symmetry import _ELEMENTS, allowed_transforms, transformed_azimuth
from training.renderer.lighting import Light, Materials, shade


@pytest.mark.parametrize(
    ("azimuths", "expected"),
    [
        ((0.0, 120.0, 240.0), {"identity": (0, 1, 2), "flip_top_bottom": (0, 2, 1)}),
        ((90.0, 210.0, 330.0), {"identity": (0, 1, 2), "flip_left_right": (0, 2, 1)}),
        ((0.0, 90.0, 180.0), {"identity": (0, 1, 2), "flip_left_right": (2, 1, 0)}),
        ((10.0, 100.0, 250.0), {"identity": (0, 1, 2)}),
    ],
)
def test_allowed_transforms_are_derived_from_the_azimuths(azimuths, expected):
    assert {t.name: t.permutation for t in allowed_transforms(azimuths)} == expected


def test_four_lights_on_the_axes_allow_all_eight_symmetries():
    assert len(allowed_transforms((0.0, 90.0, 180.0, 270.0))) == 8


@pytest.mark.parametrize("name", list(_ELEMENTS))
def test_array_operation_moves_pixels_as_its_matrix_says(name):
    matrix, op = _ELEMENTS[name]
    image = np.zeros((7, 7))
    image[3 - 2, 3 + 1] = 1.0  # offset (x, y) = (1, -2) from the centre
    y, x = np.argwhere(op(image) == 1.0)[0]
    assert (x - 3, y - 3) == (matrix[0][0] * 1 + matrix[0][1] * -2, matrix[1][0] * 1 + matrix[1][1] * -2)


def test_rot90_moves_a_light_at_0_degrees_to_90():
    assert transformed_azimuth(0.0, _ELEMENTS["rot90"][0]) == pytest.approx(90.0)


@pytest.mark.parametrize("azimuths", [(0.0, 120.0, 240.0), (0.0, 90.0, 180.0), (0.0, 90.0, 180.0, 270.0)])
def test_transformed_images_equal_renders_of_the_transformed_surface(azimuths):
    """Render a layer, transform the images (permuting channels), and compare with rendering the transformed
    height field: a lighting-consistent augmentation must be indistinguishable from a real layer."""
    rng = np.random.default_rng(0)
    size, pitch = 48, 10.0
    height = cv2.GaussianBlur(rng.normal(0, 30, (size, size)).astype(np.float32), (0, 0), 2.0) * 3
    albedo = (0.4 + 0.2 * rng.random((size, size))).astype(np.float32)
    materials = Materials(albedo, np.full_like(albedo, 0.3), np.full_like(albedo, 20.0))
    lights = [Light(a, 30.0) for a in azimuths]
    stack = np.stack([shade(height, pitch, materials, lt) for lt in lights], axis=-1)
    transforms = allowed_transforms(azimuths)
    assert len(transforms) >= 2
    for t in transforms:
        moved = Materials(*(t.apply_to_map(m) for m in (materials.albedo, materials.specular, materials.shininess)))
        rendered = np.stack([shade(t.apply_to_map(height), pitch, moved, lt) for lt in lights], axis=-1)
        np.testing.assert_allclose(t.apply_to_stack(stack), rendered, atol=2e-3, err_msg=t.name)


def test_a_disallowed_transform_would_not_match_the_renders():
    """The check above has teeth: mirroring left-right with lights at 0/120/240 breaks the lighting."""
    rng = np.random.default_rng(1)
    height = cv2.GaussianBlur(rng.normal(0, 30, (48, 48)).astype(np.float32), (0, 0), 2.0) * 3
    flat = np.full((48, 48), 0.5, np.float32)
    materials = Materials(flat, flat * 0, flat + 10)
    lights = [Light(a, 30.0) for a in (0.0, 120.0, 240.0)]
    stack = np.stack([shade(height, 10.0, materials, lt) for lt in lights], axis=-1)
    rendered = np.stack([shade(height[:, ::-1].copy(), 10.0, materials, lt) for lt in lights], axis=-1)
    best = min(np.abs(stack[:, ::-1][..., list(p)] - rendered).max() for p in itertools.permutations(range(3)))
    assert best > 0.05
