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


def test_lab_tiff_reads_its_lightness(tmp_path):
    """A CIE L*a*b* TIFF (scanners, Photoshop): Pillow cannot convert it to RGB; its L channel is read."""
    im = Image.new("RGB", (120, 120), "white")
    ImageDraw.Draw(im).line([(60, 15), (60, 105)], fill="black", width=12)
    lab = im.convert("LAB")
    path = tmp_path / "scan.tif"
    lab.save(path)
    out = to_mnist(decode(path))
    assert out.max() > 200 and (out > 128).sum(axis=0).max() >= 15


def test_12_bit_scan_in_16_bit_png_with_sbit(tmp_path):
    """A 12-bit scan stored in a 16-bit PNG (values 0..4095, sBIT 12) was divided by 65535: blank."""
    a = np.full((100, 100), 4000, np.uint16)
    a[20:80, 45:55] = 300
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    data = buf.getvalue()
    # sBIT (12 significant bits) goes right after IHDR, as scanners write it.
    sbit = b"sBIT" + bytes([12])
    chunk = (1).to_bytes(4, "big") + sbit + zlib.crc32(sbit).to_bytes(4, "big")
    data = data[:33] + chunk + data[33:]
    g = decode(data, name="scan12.png")
    assert g.max() > 0.95 and abs(float(g[50, 50]) - 300 / 4095) < 1e-3
    assert to_mnist(g).max() > 200


@pytest.mark.slow
def test_108_megapixel_phone_photo_is_decoded_downscaled(tmp_path):
    """Phone photos up to 200 MP are real inputs: decoded at 1/8 scale (draft mode), not refused."""
    im = Image.new("L", (12000, 9000), 235)
    ImageDraw.Draw(im).line([(6000, 2000), (6000, 7000)], fill=20, width=300)
    path = tmp_path / "phone.jpg"
    im.save(path, quality=80)
    del im
    g = decode(path)
    assert max(g.shape) <= 2048 and to_mnist(g).max() > 200


def test_pictures_that_would_not_fit_decoded_are_refused_from_the_header(tmp_path):
    """A 125 KB WebP of 6000x6000 took 633 MB to predict (libwebp keeps a second buffer); formats that
    cannot be decoded downscaled are held to MAX_DECODED_BYTES from their header alone."""
    path = tmp_path / "big.webp"
    Image.new("RGB", (6000, 6000), (200, 200, 200)).save(path, quality=50)
    with pytest.raises(ImageError, match="big.webp: 6000x6000 RGB is more than the limit of 128 MB decoded"):
        decode(path)


@pytest.mark.parametrize("mode", ["1", "P", "I;16"])
def test_big_bilevel_palette_and_16_bit_scans_decode(tmp_path, mode):
    """Pillow's reduce() refuses these modes: a 2100x1500 fax TIFF, palette PNG or 16-bit scan failed."""
    im = Image.new("L", (2100, 1500), 255)
    ImageDraw.Draw(im).line([(1050, 200), (1050, 1300)], fill=0, width=120)
    im = Image.fromarray(np.asarray(im).astype(np.uint16) * 257) if mode == "I;16" else im.convert(mode)
    path = tmp_path / f"scan-{mode.replace(';', '')}.tif"
    im.save(path)
    out = to_mnist(decode(path))
    assert out.max() > 200 and (out > 128).sum(axis=0).max() >= 15
