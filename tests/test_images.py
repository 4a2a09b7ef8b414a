"""Decoding: files, bytes and arrays to grey levels on their own range (digitlab.images)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitlab.errors import ImageError
from digitlab.images import MAX_PIXELS, decode, load_image
from digitlab.prepare import prepare


def to_mnist(picture) -> np.ndarray:
    return prepare(picture).image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_formats(fmt, tmp_path):
    im = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(im).ellipse([30, 10, 90, 80], outline="black", width=8)
    path = tmp_path / f"zero.{fmt.lower()}"
    im.save(path, fmt)
    out = to_mnist(decode(path))
    assert out.shape == (28, 28) and out.max() > 150


@pytest.mark.parametrize("fmt, dtype, scale", [("PNG", np.uint16, 257), ("TIFF", np.uint16, 257),
                                               ("TIFF", np.int32, 257), ("TIFF", np.float32, 1 / 255),
                                               ("TIFF", np.float32, 1)])
def test_wide_pixel_types_scale_like_8_bit(mnist, fmt, dtype, scale):
    """A 16-bit scan, a 32-bit integer or a float TIFF of a digit gives the 8-bit file's input
    (Pillow's own conversion to 8 bits clips them at 255: a 16-bit scan came out empty)."""
    page = np.asarray(Image.fromarray(255 - mnist.test_images[0]).resize((112, 112), Image.BILINEAR))
    wide = Image.fromarray((page.astype(np.float64) * scale).astype(dtype))
    buf = io.BytesIO()
    wide.save(buf, fmt)
    out = to_mnist(decode(buf.getvalue(), name="scan"))
    assert out.max() > 200
    np.testing.assert_array_equal(out, to_mnist(Image.fromarray(page)))


def test_float_image_with_nan_is_refused():
    a = np.zeros((40, 40), np.float32)
    a[5, 5] = np.nan
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "TIFF")
    with pytest.raises(ImageError, match="nan.tif: float image with NaN"):
        decode(buf.getvalue(), name="nan.tif")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello")
    with pytest.raises(ImageError, match="notes.png: not an image") as e:
        load_image(p)
    assert e.value.kind == "not_image"


def test_truncated_image(tmp_path):
    buf = io.BytesIO()
    Image.effect_noise((300, 300), 60).save(buf, "PNG")
    with pytest.raises(ImageError, match="cut.png: cannot decode") as e:
        load_image(buf.getvalue()[:2000], name="cut.png")
    assert e.value.kind == "corrupt"


def bomb_png(side: int) -> bytes:
    """A grayscale PNG header declaring side x side pixels (the refusal must come from the header alone,
    before any decoding), with one row of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    raw = zlib.compress(bytes(side + 1), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_refused():
    data = bomb_png(20000)
    assert len(data) < 200_000 and 20000 * 20000 > MAX_PIXELS
    with pytest.raises(ImageError, match="bomb.png: 20000x20000 L is more than the limit") as e:
        load_image(data, name="bomb.png")
    assert e.value.kind == "too_large"


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
