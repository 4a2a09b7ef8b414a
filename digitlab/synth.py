"""Synthetic photos and scans of MNIST digits under the conditions people's pictures come in.

Used by benchmarks/conditions.py and the tests of prepare(): each condition turns an MNIST digit (uint8
28x28, ink bright) into a picture as a person would send it - dark ink on paper by default - with
the paper, light, lines, bit depth or damage of that condition. Deterministic given the generator.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

Picture = np.ndarray | Image.Image | bytes


def _ink(digit: np.ndarray, side: int) -> np.ndarray:
    """The digit's ink coverage (float 0..1) scaled to side x side, smoothly."""
    return cv2.resize(digit.astype(np.float32) / 255.0, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def on_paper(digit: np.ndarray, rng: np.random.Generator, size: int = 320, paper: float = 0.92,
             ink_level: float = 0.12, noise: float = 0.015, side: tuple[int, int] = (160, 240),
             background: np.ndarray | None = None, place: tuple[int, int] | None = None) -> np.ndarray:
    """Dark ink (ink_level, 0..1) on paper (paper, or a background map), digit side px, its top-left corner
    at place (y, x) or at random. Returns float32 (size, size) grey in 0..1."""
    s = int(rng.integers(*side))
    page = np.full((size, size), paper, np.float32) if background is None else background.astype(np.float32)
    cover = np.zeros_like(page)
    y, x = place if place is not None else (int(v) for v in rng.integers(0, size - s, 2))
    cover[y:y + s, x:x + s] = _ink(digit, s)
    out = page * (1 - cover) + ink_level * page / max(paper, 1e-3) * cover if background is not None \
        else page * (1 - cover) + ink_level * cover
    return np.clip(out + rng.normal(0, noise, out.shape), 0, 1).astype(np.float32)


def _shadow(size: int, rng: np.random.Generator, soft: float) -> np.ndarray:
    """A cast shadow: the light drops to 40-55% beyond a straight edge through the middle third."""
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2 + rng.uniform(-size / 10, size / 10)
    d = (xx - c) * np.cos(angle) + (yy - c) * np.sin(angle)
    edge = 1 / (1 + np.exp(-d / max(soft, 0.3)))
    return 1 - (1 - rng.uniform(0.4, 0.55)) * edge


def _lines(size: int, rng: np.random.Generator, squared: bool, tilt: float, level: float,
           spacing: tuple[int, int] = (22, 34)) -> np.ndarray:
    """Paper with ruled (or squared) lines of the given darkness factor, tilted by tilt degrees."""
    step = int(rng.integers(*spacing))
    big = np.ones((2 * size, 2 * size), np.float32)
    off = int(rng.integers(0, step))
    big[off::step, :] = level
    big[off + 1::step, :] = (1 + level) / 2
    if squared:
        big[:, off::step] = level
        big[:, off + 1::step] = (1 + level) / 2
    m = cv2.getRotationMatrix2D((size, size), tilt, 1.0)
    rotated = cv2.warpAffine(big, m, (2 * size, 2 * size), flags=cv2.INTER_LINEAR, borderValue=1.0)
    return rotated[size // 2:size // 2 + size, size // 2:size // 2 + size]


def _stroke_on_a_line(digit: np.ndarray, rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """Ruled grey paper where the digit's most-inked row (a 7's bar, a 5's top, a 2's base) lies on a line,
    digit 70-160 px: the line's removal must leave the stroke that shares its pixels."""
    s = int(rng.integers(70, 160))
    cover = _ink(digit, s)
    y, x = (int(v) for v in rng.integers(0, size - s, 2))
    step = int(rng.integers(22, 34))
    background = np.ones((size, size), np.float32)
    for row in range((y + int(cover.sum(axis=1).argmax())) % step, size, step):
        background[row:row + 2] = 0.55  # two pixels of grey line, as _lines draws them
    return on_paper(digit, rng, size, side=(s, s + 1), background=0.92 * background, place=(y, x))


def _png(a: np.ndarray, bits: int = 8) -> bytes:
    buf = io.BytesIO()
    if bits == 8:
        Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, "PNG")
    else:  # a 12- or 16-bit scan in a 16-bit PNG, values on their own bit depth (0..4095 for 12 bits)
        Image.fromarray((a * (2**bits - 1)).round().astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _rotated(a: np.ndarray, rng: np.random.Generator, max_deg: float) -> np.ndarray:
    m = cv2.getRotationMatrix2D((a.shape[1] / 2, a.shape[0] / 2), rng.uniform(-max_deg, max_deg), 1.0)
    return cv2.warpAffine(a, m, a.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _canvas_corner(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 280x280 drawing canvas, digit ~40% of it in a corner, shrunk whole to 28x28 by the app."""
    page = np.ones((280, 280), np.float32)
    s = 112
    y, x = int(rng.choice([4, 280 - s - 4])), int(rng.choice([4, 280 - s - 4]))
    page[y:y + s, x:x + s] = 1 - _ink(digit, s)
    return cv2.resize(page, (28, 28), interpolation=cv2.INTER_AREA)


def _large_page(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    page = np.full((1500, 2000), 0.9, np.float32)
    s = int(rng.integers(70, 110))
    y, x = int(rng.integers(0, 1500 - s)), int(rng.integers(0, 2000 - s))
    page[y:y + s, x:x + s] = 0.9 - 0.78 * _ink(digit, s)
    return np.clip(page + rng.normal(0, 0.01, page.shape), 0, 1).astype(np.float32)


def _ink_contrast(level: float) -> Callable[[np.ndarray, np.random.Generator], Picture]:
    return lambda d, r: on_paper(d, r, ink_level=0.9 * level)


# name -> f(digit, rng) -> a float32 grey array in 0..1 (an in-memory picture) or encoded file bytes.
CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], Picture]] = {
    "plain scan": lambda d, r: on_paper(d, r),
    "dim paper": lambda d, r: on_paper(d, r, paper=0.3, ink_level=0.05, noise=0.01),
    "ink 5% of paper": _ink_contrast(0.05),
    "ink 40% of paper": _ink_contrast(0.40),
    "ink 70% of paper": _ink_contrast(0.70),
    "smooth gradient": lambda d, r: on_paper(d, r, background=0.92 * (0.45 + 0.55 * np.linspace(
        0, 1, 320)[None, :] * np.linspace(0.6, 1, 320)[:, None])),
    "hard shadow": lambda d, r: on_paper(d, r, background=0.92 * _shadow(320, r, soft=0.5)),
    "soft shadow": lambda d, r: on_paper(d, r, background=0.92 * _shadow(320, r, soft=12)),
    "ruled, blue": lambda d, r: on_paper(d, r, background=0.92 * (0.25 + 0.75 * _lines(320, r, False, 0, 0.85))),
    "ruled, grey": lambda d, r: on_paper(d, r, background=0.92 * _lines(320, r, False, 0, 0.55)),
    "squared, grey": lambda d, r: on_paper(d, r, background=0.92 * _lines(320, r, True, 0, 0.55)),
    "ruled, stroke on a line": _stroke_on_a_line,
    "squared, tilted": lambda d, r: on_paper(d, r, background=0.92 * _lines(320, r, True, r.uniform(-4, 4), 0.55)),
    "12-bit PNG": lambda d, r: _png(on_paper(d, r), bits=12),
    "16-bit PNG": lambda d, r: _png(on_paper(d, r), bits=16),
    "JPEG quality 10": lambda d, r: _jpeg(on_paper(d, r), 10),
    "blur": lambda d, r: cv2.GaussianBlur(on_paper(d, r), (0, 0), 3.0),
    "rotated up to 20 deg": lambda d, r: _rotated(on_paper(d, r), r, 20),
    "noise": lambda d, r: on_paper(d, r, noise=0.08),
    "small digit, large page": _large_page,
    "canvas shrunk to 28x28": _canvas_corner,
    "28x28 dark on light": lambda d, r: 1 - d.astype(np.float32) / 255.0,
}


# Gaps between neighbouring digits' ink, in px at MNIST's 28 px scale (negative: the ink overlaps).
SPACINGS: dict[str, tuple[int, int]] = {"wide": (6, 14), "narrow": (1, 5), "touching": (-3, 0)}


def number_picture(digits: np.ndarray, rng: np.random.Generator, spacing: str = "wide",
                   scale: tuple[float, float] = (2.0, 3.0)) -> tuple[np.ndarray, list[list[int]]]:
    """A handwritten number on paper: MNIST digits (uint8 (N, 28, 28), ink bright) side by side with gaps
    per SPACINGS[spacing] (px at 28 px scale), each digit's size (x0.85-1.15) and baseline (+-2 px)
    jittered, the line slanted (shear +-0.15), enlarged by a factor in `scale`, dark ink on paper with
    a light gradient and photo noise. Returns float32 (H, W) grey 0..1 and each digit's ink box
    [x0, y0, x1, y1] in the picture's pixels (before the slant; x1, y1 exclusive)."""
    picture, boxes, _ = number_picture_owners(digits, rng, spacing, scale, owners=False)
    return picture, boxes


def number_picture_owners(digits: np.ndarray, rng: np.random.Generator, spacing: str = "wide",
                          scale: tuple[float, float] = (2.0, 3.0), owners: bool = True
                          ) -> tuple[np.ndarray, list[list[int]], np.ndarray | None]:
    """number_picture (the same picture for the same generator state) and, with owners, which digit's ink
    each pixel holds: int16 (H, W), the digit's index in `digits` where its ink is the strongest there
    (coverage over 0.1), -1 on paper. Used to label the pieces a reader cuts (digitlab.pieces)."""
    lo, hi = SPACINGS[spacing]
    strip = np.zeros((48, 40 * len(digits) + 16), np.float32)
    owner = np.full(strip.shape, -1, np.int16)
    x, spans = 8, []
    for i, d in enumerate(digits):
        f = rng.uniform(0.85, 1.15)
        ink = cv2.resize(d.astype(np.float32) / 255.0, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR).clip(0, 1)
        rows, cols = np.flatnonzero(ink.max(axis=1) > 0.1), np.flatnonzero(ink.max(axis=0) > 0.1)
        ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        y = 40 - ink.shape[0] + int(rng.integers(-2, 3))  # the foot of the digit on a jittered baseline
        region = strip[y:y + ink.shape[0], x:x + ink.shape[1]]
        owner[y:y + ink.shape[0], x:x + ink.shape[1]][(ink > 0.1) & (ink > region)] = i
        np.maximum(region, ink, out=region)
        spans.append([x, y, x + ink.shape[1], y + ink.shape[0]])
        x += ink.shape[1] + int(rng.integers(lo, hi + 1))
    strip, owner = strip[:, :max(s[2] for s in spans) + 8], owner[:, :max(s[2] for s in spans) + 8]
    shear = rng.uniform(-0.15, 0.15)
    h, w = strip.shape
    slant = np.float32([[1, shear, -shear * h / 2], [0, 1, 0]])
    strip = cv2.warpAffine(strip, slant, (w, h))
    k = rng.uniform(*scale)
    size = (round(w * k), round(h * k))
    cover = cv2.resize(strip, size, interpolation=cv2.INTER_CUBIC).clip(0, 1)
    paper = rng.uniform(0.75, 0.95) * (1 - rng.uniform(0, 0.25) * np.linspace(0, 1, size[0])[None, :])
    out = paper * (1 - cover) + rng.uniform(0.05, 0.2) * cover + rng.normal(0, rng.uniform(0.005, 0.03), cover.shape)
    boxes = [[round(a * k) for a in s] for s in spans]
    owned = None
    if owners:
        moved = cv2.warpAffine(owner, slant, (w, h), flags=cv2.INTER_NEAREST, borderValue=-1)
        owned = cv2.resize(moved, size, interpolation=cv2.INTER_NEAREST)
    return np.clip(out, 0, 1).astype(np.float32), boxes, owned


FORMS = ("box", "comb", "rule")


def in_form(picture: np.ndarray, boxes: list[list[int]], form: str, rng: np.random.Generator) -> np.ndarray:
    """A number (number_picture's picture and digit boxes) written in a form's field: a printed box
    around it ("box"), a row of equal boxes, one per digit ("comb"), or a rule under it ("rule"). Lines 1-3 px
    (before the x1.5-3 scan scale), dark grey to black, the field 0-40% of a digit's height clear of the
    ink; the page then turned by up to 3 degrees, as a form lies under a phone. float32 (H, W) grey 0..1
    in and out; the picture grows by the paper the field needs. Raises ValueError for an unknown form."""
    if form not in FORMS:
        raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
    ys, xs = np.nonzero(picture < np.median(picture) - 0.2)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    margin = int(rng.uniform(0.05, 0.4) * (y1 - y0)) + 2
    pad = 2 * margin + 20
    # More paper: the edge's light carried on (smoothed, so its grain is not drawn out into streaks), with
    # the picture's own grain (its paper's departures from the smoothed light).
    smooth = cv2.blur(picture, (9, 9))
    grain = float(np.median(np.abs(picture - smooth))) * 1.4826
    page = cv2.copyMakeBorder(smooth, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    page = np.clip(page + rng.normal(0, grain, page.shape), 0, 1).astype(np.float32)
    page[pad:pad + picture.shape[0], pad:pad + picture.shape[1]] = picture
    x0, y0, x1, y1 = x0 + pad - margin, y0 + pad - margin, x1 + pad + margin, y1 + pad + margin
    level, width = float(rng.uniform(0.05, 0.45)), int(rng.integers(1, 4)) * max(1, (y1 - y0) // 40)
    if form == "rule":
        cv2.line(page, (x0 - margin, y1), (x1 + margin, y1), level, width)
    else:
        cv2.rectangle(page, (x0, y0), (x1, y1), level, width)
    if form == "comb":  # a row of equal boxes, one per digit, as forms print them (a digit may cross a side)
        for j in range(1, len(boxes)):
            x = round(x0 + j * (x1 - x0) / len(boxes))
            cv2.line(page, (x, y0), (x, y1), level, width)
    h, w = page.shape
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-3, 3)), 1.0)
    return cv2.warpAffine(page, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
