import numpy as np
import pytest

from tests.images_for_tests import encode, png_header_only, triplet
from training.inference.layer import REASONS, LayerError, declared_size, decode_layer


def test_a_triplet_becomes_a_stack_with_channel_k_from_image_k():
    images = triplet(40)
    layer = decode_layer([encode(im) for im in images])
    assert layer.stack.shape == (40, 40, 3) and layer.stack.dtype == np.uint8
    for k in range(3):
        np.testing.assert_array_equal(layer.stack[:, :, k], images[k])
    assert layer.converted_from_colour == (False, False, False)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_lossless_formats_round_trip(ext):
    images = triplet(32)
    layer = decode_layer([encode(im, ext) for im in images])
    np.testing.assert_array_equal(layer.stack[:, :, 2], images[2])


def test_16_bit_and_jpeg_are_accepted():
    assert decode_layer([encode(im) for im in triplet(32, np.uint16)]).bit_depth == 16
    assert decode_layer([encode(im, ".jpg") for im in triplet(32)]).stack.shape == (32, 32, 3)


def test_colour_images_are_converted_and_flagged():
    images = triplet(32)
    colour = np.stack([images[1]] * 3, axis=-1)
    layer = decode_layer([encode(images[0]), encode(colour), encode(images[2])])
    assert layer.converted_from_colour == (False, True, False)
    np.testing.assert_array_equal(layer.stack[:, :, 1], images[1])


def reason_of(blobs, **kwargs) -> tuple[str, str]:
    with pytest.raises(LayerError) as err:
        decode_layer(blobs, **kwargs)
    assert err.value.reason in REASONS
    return err.value.reason, str(err.value)


def test_bad_layers_are_refused_with_a_reason_and_the_image_named():
    good = [encode(im) for im in triplet(32)]
    assert reason_of(good[:2])[0] == "image_count"
    assert reason_of([*good, good[0]])[0] == "image_count"
    reason, message = reason_of([good[0], b"", good[2]])
    assert reason == "unreadable" and "angle1" in message and "0 bytes" in message
    reason, message = reason_of([good[0], good[1], good[2][: len(good[2]) // 2]])
    assert reason == "unreadable" and "angle2" in message
    assert reason_of([good[0], b"not an image at all", good[2]])[0] == "unreadable"
    reason, message = reason_of([good[0], good[1], encode(triplet(48)[0])])
    assert reason == "size_mismatch" and "48x48" in message and "32x32" in message
    reason, message = reason_of([good[0], good[1], encode(triplet(32, np.uint16)[0])])
    assert reason == "bit_depth_mismatch" and "16-bit" in message
    reason, message = reason_of([encode(im) for im in triplet(8)], min_side=32)
    assert reason == "too_small" and "8x8" in message and "32x32" in message


def test_a_header_declaring_too_many_pixels_is_refused_before_decoding():
    good = [encode(im) for im in triplet(32)]
    assert declared_size(png_header_only(5000, 4000)) == (5000, 4000)
    reason, message = reason_of([good[0], png_header_only(5000, 4000), good[2]], max_pixels=4096 * 4096)
    assert reason == "too_many_pixels" and "5000x4000" in message and "angle1" in message
    reason, message = reason_of([png_header_only(30000, 30000), *good[1:]], max_pixels=4096 * 4096)
    assert reason == "too_many_pixels" and "angle0" in message  # Pillow's own bomb limit, caught the same way


def test_names_appear_in_messages():
    good = [encode(im) for im in triplet(32)]
    _, message = reason_of([b"", *good[1:]], names=["a.png", "b.png", "c.png"])
    assert "a.png" in message
