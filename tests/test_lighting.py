import numpy as np
import pytest

from training.renderer.lighting import (
    Light,
    Materials,
    check_elevation,
    flat_radiance,
    light_visibility,
    parse_azimuths,
    shade,
    surface_normals,
)

PITCH = 10.0  # micrometres per pixel


def uniform_materials(shape, albedo=0.5, specular=0.0):
    return Materials(
        np.full(shape, albedo, np.float32), np.full(shape, specular, np.float32), np.full(shape, 10.0, np.float32)
    )


def bump(size=65, height=40.0, sigma=6.0):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size // 2
    return (height * np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * sigma**2))).astype(np.float32), c


def toward(light):
    d = light.direction()
    return np.array([d[0], d[1]]) / np.hypot(d[0], d[1])  # (dx, dy) in image coordinates


@pytest.mark.parametrize("azimuth", [0.0, 120.0, 240.0, 45.0])
def test_bump_is_brightest_on_the_side_facing_the_light(azimuth):
    h, c = bump()
    light = Light(azimuth, 30.0)
    image = shade(h, PITCH, uniform_materials(h.shape), light)
    ux, uy = toward(light)
    r = 6
    near = image[round(c + r * uy), round(c + r * ux)]
    far = image[round(c - r * uy), round(c - r * ux)]
    assert near > far * 1.2
    y, x = np.unravel_index(np.argmax(image), image.shape)
    assert (x - c) * ux + (y - c) * uy > 0  # the brightest pixel lies towards the light


def test_three_lights_give_different_images_of_a_bump_and_equal_images_of_a_flat_bed():
    h, _ = bump()
    images = [shade(h, PITCH, uniform_materials(h.shape), Light(a, 30.0)) for a in (0.0, 120.0, 240.0)]
    assert min(np.abs(images[i] - images[j]).max() for i in range(3) for j in range(i + 1, 3)) > 0.05
    flat = np.zeros_like(h)
    flats = [shade(flat, PITCH, uniform_materials(h.shape), Light(a, 30.0)) for a in (0.0, 120.0, 240.0)]
    assert max(np.abs(flats[0] - f).max() for f in flats) < 1e-6


@pytest.mark.parametrize("azimuth", [0.0, 90.0, 200.0])
def test_shadows_fall_away_from_the_light(azimuth):
    size, c = 81, 40
    h = np.zeros((size, size), np.float32)
    h[c - 2 : c + 3, c - 2 : c + 3] = 60.0  # a pillar 60 um high, 50 um wide
    light = Light(azimuth, 30.0)
    visible = light_visibility(h, PITCH, light)
    ux, uy = toward(light)
    behind = [visible[round(c - s * uy), round(c - s * ux)] for s in (5, 8)]
    in_front = [visible[round(c + s * uy), round(c + s * ux)] for s in (5, 8)]
    assert max(behind) < 0.1  # 60 um / tan(30 deg) = 104 um = 10 px of shadow behind
    assert min(in_front) == pytest.approx(1.0)
    assert visible[round(c - 20 * uy), round(c - 20 * ux)] == pytest.approx(1.0)  # beyond the shadow


def test_normals_of_a_plane_tilted_along_x():
    xx = np.tile(np.arange(16, dtype=np.float32), (16, 1))
    n = surface_normals(xx * PITCH, PITCH)  # slope 1 upward along +x: normal leans towards -x
    np.testing.assert_allclose(n[8, 8], [-np.sqrt(0.5), 0.0, np.sqrt(0.5)], atol=1e-6)


@pytest.mark.parametrize(
    ("text", "message"),
    [("0,120", "exactly three"), ("0,0,120", "must differ"), ("a,b,c", "numbers in degrees")],
)
def test_parse_azimuths_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        parse_azimuths(text)


def test_parse_azimuths_wraps_into_0_360():
    assert parse_azimuths("0,120,-120") == (0.0, 120.0, 240.0)


def test_azimuth_convention_is_counter_clockwise_from_the_right_edge_with_y_down():
    right, top = Light(0.0, 30.0).direction(), Light(90.0, 30.0).direction()
    assert right[0] > 0.8 and abs(right[1]) < 1e-9  # azimuth 0: beyond the right edge
    assert top[1] < -0.8 and abs(top[0]) < 1e-9  # azimuth 90: beyond the top edge (rows grow downwards)
    h, c = bump()
    image = shade(h, PITCH, uniform_materials(h.shape), Light(90.0, 30.0))
    assert image[c - 6, c] > image[c + 6, c] * 1.2  # lit from the top: the bump's upper side is brighter


@pytest.mark.parametrize("intensity", [0.75, 1.25])
def test_light_intensity_scales_radiance_and_the_flat_reference_alike(intensity):
    h, _ = bump()
    materials = uniform_materials(h.shape, specular=0.3)
    nominal = shade(h, PITCH, materials, Light(120.0, 30.0))
    scaled = shade(h, PITCH, materials, Light(120.0, 30.0, intensity))
    np.testing.assert_allclose(scaled, intensity * nominal, rtol=1e-6)
    assert flat_radiance(0.5, Light(0.0, 30.0, intensity)) == pytest.approx(
        intensity * flat_radiance(0.5, Light(0.0, 30.0))
    )


@pytest.mark.parametrize("elevation", [4.9, 85.1])
def test_check_elevation_names_the_accepted_range(elevation):
    with pytest.raises(ValueError, match="between 5 and 85 degrees"):
        check_elevation(elevation)
