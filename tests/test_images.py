"""Decoding: files, bytes and arrays to grey levels on their own range (digitlab.images)."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitlab.errors import ImageError
from digitlab.images import MAX_PIXELS, decode, decode_plain_png, grey, load_image
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


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def _canvas(mode: str, seed: int = 0) -> Image.Image:
    """A drawing as a canvas app saves it: anti-aliased ink on a plain ground, in the given mode."""
    rng = np.random.default_rng(seed)
    ink = np.zeros((100, 120), np.float32)
    ink[20:80, 50:62] = 1.0
    ink[20:30, 30:90] = rng.uniform(0.3, 1.0)
    colour = rng.integers(0, 200, 3)
    rgb = (255 * (1 - ink[..., None]) + colour * ink[..., None]).round().astype(np.uint8)
    if mode == "L":
        return Image.fromarray(rgb[..., 0], "L")
    if mode == "RGB":
        return Image.fromarray(rgb, "RGB")
    if mode == "RGBA":  # opaque
        return Image.fromarray(np.dstack([rgb, np.full(ink.shape, 255, np.uint8)]), "RGBA")
    # drawn on a transparent canvas: colour ink, alpha = coverage
    return Image.fromarray(np.dstack([np.broadcast_to(colour, rgb.shape).astype(np.uint8),
                                      (ink * 255).round().astype(np.uint8)]), "RGBA")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "RGBA-transparent"])
def test_plain_png_fast_road_reads_as_pillow_does(mode):
    """Canvas PNGs are decoded by OpenCV without Pillow's objects (decode_plain_png); the grey levels are
    Pillow's road's: exact on grey pixels, within one grey level on coloured ones (14- vs 16-bit weights)."""
    im = _canvas(mode.split("-")[0] if mode != "RGBA-transparent" else "T")
    data = _png_bytes(im)
    fast = decode_plain_png(data)
    assert fast is not None and fast.dtype == np.float32
    slow = grey(load_image(data))
    assert fast.shape == slow.shape and np.abs(fast - slow).max() <= 1 / 255 + 1e-6
    grey_im = _png_bytes(Image.fromarray(np.asarray(im.convert("L")), "L").convert(im.mode))
    np.testing.assert_array_equal(decode_plain_png(grey_im), grey(load_image(grey_im)))
    np.testing.assert_array_equal(decode(data), fast)


def _with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    chunk = len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    return data[:33] + chunk + data[33:]  # right after IHDR


@pytest.mark.parametrize("case", ["palette", "16-bit", "transparent colour", "exif", "xmp", "bad crc",
                                  "truncated", "too big to keep", "over max_pixels", "jpeg"])
def test_png_fast_road_leaves_everything_else_to_pillow(case):
    """Whatever the fast road cannot decode exactly as Pillow's road does (other modes, orientation in
    EXIF or XMP, damage, size limits) is left to load_image: decode_plain_png says None."""
    rgb = _canvas("RGB")
    data = _png_bytes(rgb)
    max_pixels = MAX_PIXELS
    if case == "palette":
        data = _png_bytes(rgb.convert("P"))
    elif case == "16-bit":
        data = _png_bytes(Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
    elif case == "transparent colour":
        data = _png_bytes(rgb, transparency=(255, 255, 255))
    elif case == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated: Pillow's road turns it upright
        data = _png_bytes(rgb, exif=exif)
    elif case == "xmp":
        data = _with_chunk(data, b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta tiff:Orientation=\"6\"/>")
    elif case == "bad crc":
        data = data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
    elif case == "truncated":
        data = data[:len(data) // 2]
    elif case == "too big to keep":
        data = _png_bytes(Image.new("L", (4100, 10), 255))
    elif case == "over max_pixels":
        max_pixels = 100 * 120 - 1
    elif case == "jpeg":
        buf = io.BytesIO()
        rgb.save(buf, "JPEG")
        data = buf.getvalue()
    assert decode_plain_png(data, max_pixels) is None
    if case not in ("bad crc", "truncated", "over max_pixels"):
        np.testing.assert_array_equal(decode(data), grey(load_image(data)))
    if case == "exif":
        assert decode(data).shape == (120, 100)


@pytest.mark.parametrize("damage", ["truncated", "bad data with right CRCs"])
def test_damaged_png_bytes_are_refused_by_decode_as_by_load_image(damage):
    data = _png_bytes(Image.effect_noise((300, 300), 60))
    if damage == "truncated":
        data = data[:2000]
    else:  # the compressed pixels damaged, the chunk's CRC recomputed: only the decoder can tell
        length = int.from_bytes(data[33:37], "big")
        body = bytearray(data[41:41 + length])
        body[10:12] = bytes([body[10] ^ 0xFF, body[11] ^ 0x55])
        data = data[:41] + bytes(body) + zlib.crc32(b"IDAT" + bytes(body)).to_bytes(4, "big") + data[45 + length:]
        assert data[37:41] == b"IDAT" and decode_plain_png(data) is None
    with pytest.raises(ImageError, match="cut.png: cannot decode") as e:
        decode(data, name="cut.png")
    assert e.value.kind == "corrupt"
