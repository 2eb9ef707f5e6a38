import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from training.inference.images import ImageError, decode_gray, encode_png, read_png_array, write_atomic


def png_bytes(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a readable"),
        (png_bytes(np.full((32, 32), 7, np.uint8))[:60], "not a readable"),  # truncated
    ],
)
def test_decode_rejects_unusable_bytes_with_a_reason(data, message):
    with pytest.raises(ImageError, match=message):
        decode_gray(data, name="a0.png")


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".jpg"])
def test_decode_reads_every_supported_format(ext):
    gray = np.tile(np.arange(64, dtype=np.uint8) * 3, (16, 1))
    ok, buf = cv2.imencode(ext, gray)
    assert ok
    out = decode_gray(buf.tobytes())
    assert out.pixels.shape == (16, 64) and out.bit_depth == 8 and not out.converted_from_colour
    assert np.abs(out.pixels.astype(int) - gray).max() <= (8 if ext == ".jpg" else 0)


def test_decode_keeps_sixteen_bits_and_converts_colour_to_gray():
    deep = (np.arange(256, dtype=np.uint16) * 200).reshape(16, 16)
    out = decode_gray(png_bytes(deep))
    assert out.bit_depth == 16 and np.array_equal(out.pixels, deep)
    red = Image.new("RGB", (8, 8), (200, 0, 0))  # a real RGB file: luma weights R 0.299, G 0.587, B 0.114
    buffer = io.BytesIO()
    red.save(buffer, format="PNG")
    out = decode_gray(buffer.getvalue())
    assert out.converted_from_colour and out.pixels.shape == (8, 8) and int(out.pixels[0, 0]) == 60
    rgba = Image.new("RGBA", (8, 8), (0, 0, 200, 255))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert int(decode_gray(buffer.getvalue()).pixels[0, 0]) == 23


def test_stacked_png_keeps_channel_k_as_light_k_in_the_file(tmp_path):
    stack = np.zeros((4, 5, 3), np.uint8)
    stack[..., 0], stack[..., 1], stack[..., 2] = 10, 20, 30
    path = tmp_path / "stack.png"
    write_atomic(path, encode_png(stack))
    assert Image.open(io.BytesIO(path.read_bytes())).getpixel((0, 0)) == (10, 20, 30)  # R, G, B
    np.testing.assert_array_equal(read_png_array(path), stack)


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    write_atomic(path, b"old")
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the owner-only mode of a temporary file
