"""People's images -> MNIST-style 28x28 inputs, made the way MNIST itself was made.

LeCun et al.: digits were size-normalised to fit a 20x20 box keeping their aspect ratio (anti-aliased,
hence grey levels), then centred in a 28x28 field by their centre of mass. We do the same after
turning any photo or drawing into bright ink on a black background: polarity from the border, the
background removed (followed across the page where the light is uneven), a form's printed box
dropped, specks ignored, thin pen strokes thickened. A 28x28 image is taken to be MNIST-style
already: only its polarity is fixed.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError

from digitlab.errors import ImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
# Refuse images whose pixel count would take a lot of memory to decode, whatever their file size
# (a "decompression bomb" is a few KB of PNG that decodes to gigabytes).
MAX_PIXELS = 50_000_000
TARGET_MASS_CENTER = 14.0  # where MNIST's centre-of-mass lands (rows and columns, pixel-index units)


def load_image(source: str | os.PathLike | bytes | IO[bytes], name: str | None = None, *,
               max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file (path, bytes or file object), with EXIF rotation applied.

    max_pixels: the most pixels to decode; a JPEG declaring more is decoded at the 1/2, 1/4 or 1/8 scale
    that fits (libjpeg's draft mode, nearly free), anything else is refused.
    Raises ImageError naming the file for anything unreadable, not an image, or too large."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
            if im.width * im.height > max_pixels and im.format == "JPEG":
                scale = next((s for s in (2, 4, 8) if -(-im.width // s) * -(-im.height // s) <= max_pixels), 8)
                im.draft(im.mode, (-(-im.width // scale), -(-im.height // scale)))
            if im.width * im.height > max_pixels:
                raise ImageError(f"{label}: {im.width}x{im.height} pixels is more than the limit of "
                                 f"{max_pixels:,} (a decompression bomb?)", kind="too_large")
            im.load()
            im = ImageOps.exif_transpose(im)
        if im.mode == "F" and not np.isfinite(np.asarray(im)).all():
            raise ImageError(f"{label}: float image with NaN or infinite pixels; expected finite values")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (or a format Pillow cannot read); "
                         "expected PNG, JPEG, BMP, GIF, TIFF or WebP", kind="not_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{label}: refused: {e}", kind="too_large") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{label}: cannot decode image ({e})") from None
    return im


def _grayscale(im: Image.Image) -> np.ndarray:
    """Luminance as float32 0..255. Transparent regions become background: for dark ink on a
    transparent canvas (the common case for drawings) that is white, for light ink it is black."""
    if im.mode.startswith("I") or im.mode == "F":
        return _wide_grayscale(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if not has_alpha:
        return np.asarray(im.convert("L"), dtype=np.float32)
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3] / 255.0
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if alpha.min() > 0.98:
        return lum
    opaque = alpha > 0.5
    background = 255.0 if (opaque.any() and lum[opaque].mean() < 128) else 0.0
    return lum * alpha + background * (1 - alpha)


def _wide_grayscale(im: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float images (scanners, microscopes, TIFFs from NumPy) on 0..255.
    Pillow's convert("L") clips them at 255 instead of scaling, which turns a 16-bit scan white."""
    a = np.asarray(im, dtype=np.float32)
    top = float(a.max()) if a.size else 1.0
    if im.mode.startswith("I;16"):
        full = 65535.0
    elif im.mode == "F" and top <= 1.0:
        full = 1.0  # floats in [0, 1]
    else:  # the narrowest usual range that holds the values: 8-bit, 16-bit, else the image's own maximum
        full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return np.clip(a, 0, None) * (255.0 / full)


def _border(a: np.ndarray) -> np.ndarray:
    k = max(1, min(a.shape) // 20)
    return np.concatenate([a[:k].ravel(), a[-k:].ravel(), a[:, :k].ravel(), a[:, -k:].ravel()])


def to_mnist(image: Image.Image | np.ndarray) -> np.ndarray:
    """An MNIST-style uint8 (28, 28) array, ink bright on black, from any image."""
    g = _grayscale(image) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.float32)
    if g.ndim == 3:  # an RGB array
        g = g[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if g.ndim != 2 or min(g.shape) < 1:
        raise ImageError(f"expected a 2-D image, got shape {g.shape}")
    background = float(np.median(_border(g)))
    if background > 127:  # dark ink on a light background: invert so ink is bright, as in MNIST
        g, background = 255.0 - g, 255.0 - background
    if g.shape == (28, 28):
        return np.clip(g, 0, 255).round().astype(np.uint8)

    # Remove the background - its level where it is, for the shadows and uneven light of photos of
    # paper - and stretch the ink to full range; faint noise becomes black.
    ink = g - _background(g, background)
    peak = float(ink.max())
    if peak < 16:  # nothing but background: an empty image
        return np.zeros((28, 28), np.uint8)
    ink = np.clip(ink * (255.0 / peak), 0, 255)
    ink[ink < 64] = 0
    ink = _drop_frame_lines(ink)
    crop = _crop_to_ink(ink)
    crop = _thicken(crop)

    # Fit the longer side to 20 pixels, anti-aliased, keeping the aspect ratio.
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    patch = np.asarray(Image.fromarray(crop.astype(np.uint8)).resize(size, Image.LANCZOS, reducing_gap=3.0),
                       dtype=np.float32)
    patch = np.clip(patch, 0, 255)

    # Paste into 28x28 so the centre of mass sits at the centre (kept inside the frame).
    mass = patch.sum()
    ph, pw = patch.shape
    cy = (patch.sum(axis=1) @ np.arange(ph)) / mass if mass else ph / 2
    cx = (patch.sum(axis=0) @ np.arange(pw)) / mass if mass else pw / 2
    top = int(np.clip(round(TARGET_MASS_CENTER - cy), 0, 28 - ph))
    left = int(np.clip(round(TARGET_MASS_CENTER - cx), 0, 28 - pw))
    out = np.zeros((28, 28), np.float32)
    out[top:top + ph, left:left + pw] = patch
    return out.round().astype(np.uint8)


def _shrunk(a: np.ndarray, long_side: int) -> np.ndarray:
    """a (0..255) as uint8, box-averaged down to at most long_side pixels on its longer side."""
    h, w = a.shape
    f = min(1.0, long_side / max(h, w))
    return np.asarray(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).resize(
        (max(1, round(w * f)), max(1, round(h * f))), Image.BOX))


def _background(g: np.ndarray, level: float) -> np.ndarray | np.float32:
    """The background's brightness at each pixel (ink bright). Evenly lit images - drawings, scans,
    crops - keep the single border level. Where the border's own brightness varies (a shadow or uneven
    light across a photo of paper), a grey-level opening - min filter, then max filter - wider than any
    stroke removes the ink and keeps the slow changes of light. Done at a long side of 64 px, where
    averaging also hides pixel noise, with a window half the image."""
    h, w = g.shape
    if max(h, w) < 64:  # small images: drawings and crops; the border level is enough
        return np.float32(level)
    small = _shrunk(g, 64)
    low, high = np.percentile(_border(small.astype(np.float32)), [10, 90])
    if high - low < 24:
        return np.float32(level)
    k = 2 * (64 // 4) + 1

    def filtered(a: np.ndarray, reduce) -> np.ndarray:  # a k x k min or max filter, as two 1-D passes
        a = np.pad(a, k // 2, mode="edge")  # repeating the edge carries the light's slope on
        a = reduce(np.lib.stride_tricks.sliding_window_view(a, k, axis=0), axis=-1)
        return reduce(np.lib.stride_tricks.sliding_window_view(a, k, axis=1), axis=-1)

    opened = filtered(filtered(small, np.min), np.max)
    return np.asarray(Image.fromarray(opened).resize((w, h), Image.BILINEAR), dtype=np.float32)


def _drop_frame_lines(ink: np.ndarray) -> np.ndarray:
    """Remove the printed box or line around a digit cut from a form: otherwise the crop takes in the box
    and the digit shrinks to a fraction of 20x20 beside four bars. A piece of ink is taken for a frame
    line when it runs along the edge - nearly all of it within 8% of the border - for 60% of the side
    or more. Digits touching such a line, and images with nothing else in them, are left alone."""
    h, w = ink.shape
    small = _shrunk(ink, 128) > 32  # label at a long side of at most 128 px: plenty for straight lines
    sh, sw = small.shape
    if min(sh, sw) < 8:
        return ink
    band = np.zeros_like(small)
    bh, bw = max(1, round(0.08 * sh)), max(1, round(0.08 * sw))
    band[:bh], band[-bh:], band[:, :bw], band[:, -bw:] = True, True, True, True
    labels = Image.fromarray(small.astype(np.uint8)).copy()  # 1 = ink not yet labelled (a copy: writable)
    frame = np.zeros_like(small)
    for label in range(2, 256):  # each flood fill (Pillow's, in C) labels one connected piece
        todo = np.flatnonzero(np.asarray(labels) == 1)
        if not len(todo):
            break
        ImageDraw.floodfill(labels, (int(todo[0] % sw), int(todo[0] // sw)), label)
        piece = np.asarray(labels) == label
        rows, cols = np.nonzero(piece)
        long = np.ptp(rows) + 1 >= 0.6 * sh or np.ptp(cols) + 1 >= 0.6 * sw
        if long and band[piece].mean() >= 0.95:
            frame |= piece
    else:
        return ink  # too many pieces to be a drawing on a form: noise or texture, leave it
    if not frame.any():
        return ink
    # Back to full size, widened by a pixel of the small image to take the lines' anti-aliased edges.
    mask = Image.fromarray(frame.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3)).resize((w, h))
    kept = np.where(np.asarray(mask) > 0, 0, ink)
    return kept if kept.sum() >= 0.1 * ink.sum() else ink


def _crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The ink's bounding box, ignoring stray specks: find where the central 99% of the ink mass lies
    along each axis, widen that by a margin so no part of the digit is cut, then crop tightly inside.
    A dot of dust in a corner of a photo would otherwise shrink the digit to a fraction of 20x20."""
    def span(mass: np.ndarray) -> tuple[int, int]:
        cum = np.cumsum(mass) / mass.sum()
        return int(np.searchsorted(cum, 0.005)), int(np.searchsorted(cum, 0.995))

    (r0, r1), (c0, c1) = span(ink.sum(axis=1)), span(ink.sum(axis=0))
    margin = int(0.15 * max(r1 - r0 + 1, c1 - c0 + 1)) + 1
    r0, c0 = max(0, r0 - margin), max(0, c0 - margin)
    window = ink[r0:r1 + margin + 1, c0:c1 + margin + 1]
    rows, cols = np.nonzero(window)
    return window[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _thicken(crop: np.ndarray) -> np.ndarray:
    """Thin pen strokes in a large photo would shrink to faint hairlines in 20x20; MNIST's strokes are
    about 2-3 px wide there. Work at a long side of ~100 px and dilate until the stroke is thick enough."""
    if max(crop.shape) > 100:
        crop = _shrunk(crop, 100).astype(np.float32)
        if crop.max() > 0:
            crop = crop * (255.0 / crop.max())
    target = 2.2 * max(crop.shape) / 20  # wanted stroke width at this resolution
    for _ in range(8):
        mask = crop > 96
        area = mask.sum()
        if not area:
            break
        interior = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        boundary = area - interior.sum()
        width = 2.0 * area / max(1, boundary)
        if width >= target * 0.7:
            break
        padded = np.pad(crop, 1)
        crop = np.asarray(Image.fromarray(padded.astype(np.uint8)).filter(ImageFilter.MaxFilter(3)),
                          dtype=np.float32)
    return crop


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


def expand_sources(sources: list[str], errors: list[str] | None = None) -> list[Path]:
    """Files as given; folders expanded to the images inside them (by suffix, sorted, not recursive).

    Anything named as an image that is not a regular file (a dangling or looping symbolic link, a FIFO, a
    folder named x.png, a missing file) is an error, never skipped silently: with errors given, one line
    per such path is appended there ("PATH: why") and the path left out; without, ImageError is raised."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        wanted = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES) if p.is_dir() else [p]
        for q in wanted:
            why = _not_a_file(q)
            if why is None:
                out.append(q)
            elif errors is None:
                raise ImageError(f"{q}: {why}")
            else:
                errors.append(f"{q}: {why}")
    return out


def load_labelled_folder(folder: str | os.PathLike, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """People's own labelled digits: ``folder/<class>/<image>``, one subfolder per class named by its
    label or its index ("0".."9" for MNIST; "0".."9" or a label without "/" for Fashion-MNIST), each image
    made MNIST-style. Returns (N, 28, 28) uint8 images, (N,) labels and the files' names.

    Raises ImageError naming the file or folder: evaluating on part of what the user meant would
    report a figure for data they did not choose."""
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder; expected one subfolder of images per class")
    index = {**{label: k for k, label in enumerate(classes)}, **{str(k): k for k in range(len(classes))}}
    subfolders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (index.get(p.name, -1), p.name))
    unknown = [p.name for p in subfolders if p.name not in index]
    if unknown:
        raise ImageError(f"{root}: subfolder(s) {', '.join(unknown)} name no class; expected subfolders named "
                         f"0..{len(classes) - 1} (or the class labels)")
    images, labels, names = [], [], []
    for sub in subfolders:
        for path in expand_sources([str(sub)]):
            images.append(to_mnist(load_image(path)))
            labels.append(index[sub.name])
            names.append(str(path))
    if not images:
        raise ImageError(f"{root}: no images found; expected subfolders 0..{len(classes) - 1} holding image "
                         f"files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(images), np.asarray(labels, dtype=np.int64), names
