"""Decoding: image files, bytes and in-memory pictures to grey levels on their own range.

What a picture shows is prepare()'s business (digitlab.prepare); here we only turn every kind of input
into one float32 grey array in 0..1 - 8-bit, 16-bit (with the PNG's sBIT), 12-bit scans, float and
integer TIFFs, CIE L*a*b*, CMYK, palettes and transparency - and decode huge photos downscaled.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
# The largest pictures accepted. JPEGs (phone photos, up to 200 MP today) are decoded at 1/2-1/8 scale
# by the decoder itself (draft mode) for almost nothing; other formats decode whole, so they are held
# to what fits in memory: MAX_DECODED_BYTES of decoded pixels.
MAX_PIXELS = 250_000_000
MAX_DECODED_BYTES = 128 * 2**20  # (decoding and conversion take about 3x this at their peak)
DECODE_SIDE = 1024  # decode big pictures to a long side of at least this; prepare works at 512
Image.MAX_IMAGE_PIXELS = None  # our own limits below replace Pillow's warning-then-error heuristics
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as Pillow's convert("L")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG chunks that change nothing either decoder shows of the pixels (neither applies gamma or colour
# management); any other (a transparent colour, an ICC profile, animation, EXIF orientation) goes to Pillow.
_PLAIN_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"pHYs", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"tIME", b"bKGD",
                 b"tEXt", b"zTXt", b"iTXt"}
_ORIENTING_TEXT = (b"Raw profile type exif", b"XML:com.adobe.xmp")  # Pillow's exif_transpose reads these


def load_image(source: str | os.PathLike | bytes | IO[bytes], name: str | None = None, *,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and decode an image file (path, bytes or file object), with EXIF rotation applied.

    Big pictures are decoded downscaled to a long side of at least DECODE_SIDE: JPEGs by the decoder
    itself (libjpeg's draft mode at 1/2, 1/4 or 1/8, nearly free), other formats reduced after decoding.
    max_pixels: the most pixels to decode; a JPEG declaring more is decoded at the draft scale that
    fits, anything else is refused (and so is any format whose decoded pixels would pass MAX_DECODED_BYTES).
    Raises ImageError naming the file for anything unreadable, not an image, or too large."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like: the picture still decodes
            im = Image.open(source)
            if im.format == "JPEG" and (max(im.size) > 2 * DECODE_SIDE or im.width * im.height > max_pixels):
                _draft(im, max_pixels)
            _check_size(im, label, max_pixels)
            im.load()
            if max(im.size) > 2 * DECODE_SIDE:
                im = reduce_picture(im, max(1, int(max(im.size) / DECODE_SIDE)))
            im = ImageOps.exif_transpose(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (or a format Pillow cannot read); "
                         "expected PNG, JPEG, BMP, GIF, TIFF or WebP", kind="not_image") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{label}: refused: {e}", kind="too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, struct.error, MemoryError) as e:
        raise ImageError(f"{label}: cannot decode image ({e})") from None
    im.info.setdefault("digitlab_sbit", _png_sbit(source))
    return im


def reduce_picture(im: Image.Image, factor: int) -> Image.Image:
    """im box-averaged by factor. Pillow's reduce() refuses bilevel, palette and 16-bit modes (fax TIFFs,
    palette PNGs, 16-bit scans): those are widened first to a mode it takes, keeping their values."""
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode.startswith("I;16"):
        info = im.info
        im = im.convert("I")
        im.info.update(info)  # keep the sBIT read from the file
    return im.reduce(factor)


def _draft(im: Image.Image, max_pixels: int) -> None:
    """Ask libjpeg for the smallest of 1/2, 1/4, 1/8 scale that keeps DECODE_SIDE and fits max_pixels."""
    for s in (8, 4, 2):
        w, h = -(-im.width // s), -(-im.height // s)
        if max(w, h) >= DECODE_SIDE and w * h <= max_pixels:
            break
    else:
        s = next((s for s in (2, 4, 8) if -(-im.width // s) * -(-im.height // s) <= max_pixels), 8)
    im.draft("L" if im.mode in ("L", "RGB", "YCbCr") else im.mode, (-(-im.width // s), -(-im.height // s)))


def _check_size(im: Image.Image, label: str, max_pixels: int) -> None:
    """Refuse, from the header alone, what no camera makes or what would not fit in memory decoded."""
    pixels = im.width * im.height
    bands = len(im.getbands())
    depth = 4 if im.mode in ("I", "F", "RGBX") else 2 if im.mode.startswith("I;16") else 1
    # (libwebp decodes into a buffer of its own and Pillow copies it: twice the memory, measured)
    decoded = pixels * bands * depth * (2 if im.format == "WEBP" else 1) if im.format != "JPEG" else 0
    if pixels > max_pixels or decoded > MAX_DECODED_BYTES:
        limit = f"{max_pixels:,} pixels" if pixels > max_pixels else \
            f"{MAX_DECODED_BYTES // 2**20} MB decoded ({im.format or 'this format'} cannot be decoded downscaled)"
        raise ImageError(f"{label}: {im.width}x{im.height} {im.mode} is more than the limit of {limit}",
                         kind="too_large")


def _png_sbit(source: Any) -> int | None:
    """The significant bits of a greyscale PNG (its sBIT chunk), which Pillow does not expose: a 12-bit
    scan stored in 16 bits says 12. None when absent or not a PNG."""
    try:
        if isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                head = f.read(1 << 16)
        else:
            pos = source.tell()
            source.seek(0)
            head = source.read(1 << 16)
            source.seek(pos)
    except (OSError, AttributeError, ValueError):
        return None
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    i = 8
    while i + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[i:i + 8])
        if kind == b"sBIT" and length >= 1 and i + 9 <= len(head):
            return head[i + 8]
        if kind == b"IDAT":
            return None
        i += 12 + length
    return None


def decode(source: str | os.PathLike | bytes | IO[bytes], name: str | None = None,
           max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file (path, bytes or file object) as grey levels: float32 (H, W) in 0..1 on the picture's
    own range. Every failure, in opening or in converting, is an ImageError naming the file."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, bytes):
        fast = decode_plain_png(source, max_pixels)
        if fast is not None:
            return fast
    im = load_image(source, name=label, max_pixels=max_pixels)
    try:
        return grey(im)
    except ImageError as e:
        raise ImageError(f"{label}: {e}") from None
    except (OSError, ValueError, TypeError, MemoryError) as e:
        raise ImageError(f"{label}: cannot convert a {im.mode} image to grey levels ({e})") from None


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if data does not start like a PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _plain_png(data: bytes, max_pixels: int) -> bool:
    """Whether data is a PNG that OpenCV decodes to what Pillow's road gives: 8-bit grey, RGB or RGBA,
    every chunk's CRC right and none outside _PLAIN_CHUNKS, and small enough to need no reduction and
    to pass every limit load_image applies (so that road keeps every refusal and its message)."""
    size = png_size(data)
    if size is None or len(data) < 33 or data[24] != 8 or data[25] not in (0, 2, 6):
        return False
    w, h = size
    if not 0 < w <= 2 * DECODE_SIDE or not 0 < h <= 2 * DECODE_SIDE or w * h > max_pixels:
        return False
    view, i = memoryview(data), 8
    while i + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, i)
        end = i + 8 + length
        if kind not in _PLAIN_CHUNKS or end + 4 > len(data) \
                or zlib.crc32(view[i + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if kind in (b"tEXt", b"zTXt", b"iTXt") and bytes(view[i + 8:end]).startswith(_ORIENTING_TEXT):
            return False
        if kind == b"IEND":
            return True
        i = end + 4
    return False  # no IEND: truncated


def decode_plain_png(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
    """decode(data) for the common canvas upload - an 8-bit grey, RGB or RGBA PNG with nothing but pixels
    (see _plain_png) - decoded by OpenCV's libpng without Pillow's image objects and copies: float32 (H, W)
    in 0..1. None for any other data (decode it with decode() or load_image(), which apply every guard).
    Colour is weighted as Pillow does (ITU-R BT.601) in OpenCV's 14-bit fixed point, which may differ from
    Pillow's 16-bit rounding by one grey level on coloured pixels; grey pixels are exact."""
    if not _plain_png(data, max_pixels):
        return None
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint8 or a.shape[:2] != png_size(data)[::-1]:
        return None  # a decoding error: load_image says what it is
    scale = np.float32(1 / 255)
    if a.ndim == 2:
        return a.astype(np.float32) * scale
    if a.shape[2] == 3:
        return cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float32) * scale
    lum = cv2.cvtColor(a, cv2.COLOR_BGRA2GRAY).astype(np.float32) * scale
    alpha = a[..., 3]
    if cv2.minMaxLoc(alpha)[0] >= 250:  # opaque after all (most canvases), as _pil_grey decides
        return lum
    return _composite(lum, alpha.astype(np.float32) * scale)


def grey(picture: Any) -> np.ndarray:
    """Grey levels, float32 (H, W) in 0..1, of a PIL image or a NumPy array.

    Arrays: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 is 0..255, other integers are scaled by the
    narrowest bit depth that holds their maximum (a 12-bit scan: 4095), floats must lie in 0..1, bool is
    0/1. Transparent pixels become the paper: white behind dark ink, black behind bright ink.
    Raises ImageError for other shapes and for NaN, infinite or out-of-range values."""
    if isinstance(picture, Image.Image):
        try:
            return _pil_grey(picture)
        except ImageError:
            raise
        except (OSError, ValueError, TypeError) as e:  # a mode Pillow opens but cannot convert
            raise ImageError(f"cannot convert a {picture.mode} image to grey levels ({e})") from None
    a = np.asarray(picture)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / _full_scale(float(a.max()) if a.size else 1.0, None)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)  # NaN and inf show in these
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ImageError("holds NaN or infinite values; expected finite pixel values")
        if lo < 0 or hi > 1:
            raise ImageError(f"float pixels must lie in 0..1, got {lo:g}..{hi:g} (uint8 pixels may be 0..255)")
    else:
        raise ImageError(f"pixels of dtype {a.dtype}: expected uint8 0..255, float 0..1 or integers")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = _composite(a[..., :3] @ LUMA, a[..., 3] if a.shape[2] == 4 else None)
    if a.ndim != 2 or min(a.shape) < 1:
        raise ImageError(f"expected a 2-D picture (H, W), or (H, W, 3|4) colour; got shape {a.shape}")
    return a


def _pil_grey(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float32)
        return np.clip(a, 0, None) / _full_scale(float(a.max()) if a.size else 1.0, im.info.get("digitlab_sbit"))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not np.isfinite(a).all():
            raise ImageError("float image with NaN or infinite pixels; expected finite values")
        top = float(a.max()) if a.size else 1.0
        return np.clip(a, 0, None) / (1.0 if top <= 1.0 else _full_scale(top, None))
    if im.mode == "LAB":  # CIE L*a*b*: the L channel is the lightness
        return np.asarray(im.getchannel(0), dtype=np.float32) / 255.0
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] >= 250:  # opaque after all (most canvases): luminance only
            return np.asarray(rgba.convert("L"), dtype=np.float32) * np.float32(1 / 255)
        a = np.asarray(rgba)
        lum = cv2.cvtColor(a, cv2.COLOR_RGBA2GRAY).astype(np.float32) * np.float32(1 / 255)
        return _composite(lum, a[..., 3].astype(np.float32) * np.float32(1 / 255))
    if im.mode not in ("L", "RGB", "P", "1", "CMYK", "YCbCr"):
        im = im.convert("RGB")  # HSV and the rest
    return np.asarray(im.convert("L"), dtype=np.float32) * np.float32(1 / 255)


def _full_scale(top: float, sbit: int | None) -> float:
    """The value that means white: the PNG's significant bits when they hold the data, else the narrowest
    of 8..16-bit (or the maximum itself beyond) that holds the picture's maximum."""
    if sbit and top <= 2**sbit - 1:
        return float(2**sbit - 1)
    for bits in range(8, 17):
        if top <= 2**bits - 1:
            return float(2**bits - 1)
    return max(top, 1.0)


def _composite(lum: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Luminance over the paper where transparent: white behind dark ink (drawings on a transparent
    canvas), black behind bright ink."""
    if alpha is None or alpha.min() > 0.98:
        return lum.astype(np.float32)
    opaque = alpha > 0.5
    paper = 1.0 if (opaque.any() and lum[opaque].mean() < 0.5) else 0.0
    return (lum * alpha + paper * (1 - alpha)).astype(np.float32)


def _not_a_file(p: Path) -> str | None:
    """Why p cannot be read as an image file (None if it is a regular file). Checked before opening: a
    FIFO would block the open forever, and a dangling or looping link deserves its own message."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        return f"dangling symbolic link (to {os.readlink(p)})" if p.is_symlink() else "no such file"
    except OSError as e:
        return "symbolic link loop" if e.errno == errno.ELOOP else f"cannot read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not an image file"
    return "is a FIFO (named pipe), not an image file" if stat.S_ISFIFO(mode) else "is not a regular file"


def source_files(sources: list[str]) -> Iterator[tuple[Path, str | None]]:
    """Every file named by sources, in order, with why it cannot be read as an image (None if it can):
    files as given, folders expanded to the images inside them (by suffix, sorted, not recursive; a folder
    with none is itself one entry with its reason). Nothing is opened: a FIFO would block."""
    for s in sources:
        p = Path(s)
        wanted = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        if p.is_dir() and not wanted:
            yield p, f"a folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        for q in wanted:
            yield q, _not_a_file(q)


def expand_sources(sources: list[str], errors: list[str] | None = None) -> list[Path]:
    """Files as given; folders expanded to the images inside them (by suffix, sorted, not recursive).

    Anything named as an image that is not a regular file (a dangling or looping symbolic link, a FIFO, a
    folder named x.png, a missing file) is an error, never skipped silently: with errors given, one line
    per such path is appended there ("PATH: why") and the path left out; without, ImageError is raised."""
    out: list[Path] = []
    for path, why in source_files(sources):
        if why is None:
            out.append(path)
        elif errors is None:
            raise ImageError(f"{path}: {why}")
        else:
            errors.append(f"{path}: {why}")
    return out
