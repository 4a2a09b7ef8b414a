"""The one road from any decoded picture to what the model sees: prepare().

Every door (files, bytes, PIL images, NumPy arrays, torch tensors, lists, JSON pixels, uploads, batches)
decodes its input to a grey picture and calls prepare(); nothing else makes model inputs. The steps,
each relative to the picture itself (its paper, its ink contrast, its size), never a fixed grey level:

1. Grey levels on the picture's own range (decoding: digitlab.images.grey).
2. A 28x28 picture that is already MNIST-like (ink bright on black, within the centre 20x20, centred by
   mass) passes through unchanged, and so does its negative (only the polarity fixed): MNIST's own
   images stay byte-identical.
3. Polarity from the tails of the brightness distribution (ink is the minority that departs from paper).
4. The paper is followed across the picture by a grey-level opening wider than any stroke (OpenCV, in
   C++): shadows with sharp or soft edges, gradients and dim light become flat; ink contrast is taken
   relative to the local paper brightness, so ink in a shadow counts as much as ink in the light.
5. Ink = contrast above a threshold set by the picture's own noise and its ink's peak contrast.
6. Ruled and squared paper, and a form's printed box: families of long thin straight lines (two or more
   parallel lines crossing most of the picture, tilted up to 6 degrees) are removed.
7. Marks: connected pieces of ink; pieces stacked over one another (a 5's detached bar, a broken 4 or 8)
   are one mark; specks far smaller than the largest mark are ignored. No mark: "empty"; several
   digit-sized marks side by side: "several_digits".
8. MNIST's own recipe (LeCun et al.): thin strokes thickened to MNIST's ~2 px at 20 px, the ink fit to
   20x20 keeping its aspect ratio (area-averaged, hence anti-aliased), centred by mass in 28x28.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from digitlab.errors import ImageError
from digitlab.images import IMAGE_SUFFIXES, decode, expand_sources, grey

cv2.setNumThreads(1)  # pictures here are small: threads cost more than they give, and servers run several

WORK_SIDE = 128  # marks are found at a long side of at most this (a digit needs ~20 px; small ones are redone finer)
FINE_SIDE = 512  # ... and again at this long side when nothing was found on a big picture (a 70 px digit on a
# 2000 px page is 4-5 px at 128, its strokes under a pixel: too faint to tell from the paper)
BIG_ARRAY = 4_000_000  # arrays over this many pixels are shrunk before anything else (a 2000x2000 is plenty)
SMALL_SIDE = 112  # ... and pictures whose short side is under this many are enlarged to it
MIN_CONTRAST = 0.12  # ink must differ from its paper by 12% of the paper's brightness (readable ink: 30-95%)
MIN_SNR = 6.0  # ... and by 6 times the picture's own noise (robust standard deviation)
CLEAR_TAIL = 0.3  # ink departs from its paper's border by this much of the grey range, paper's light by less
# In a number, pieces one above the other this share of the taller's height apart are two marks (measured:
# the bars of 400 MNIST test 5s lie up to 0.38 apart; a caption under a meter reading, 0.57).
MARK_GAP = 0.45
FRAME_TILT = 8  # degrees: a form box photographed askew is still a frame (squared paper: 6, see _line_family)
FRAMES_LOOKED_AT = 8  # the largest pieces tested for frames: a bound on the time a busy page takes
MASS_CENTER = 14.0  # where MNIST's centre of mass lands (rows and columns, pixel-index units)
SOFT_SIDE = 14  # a digit under this many px in its picture is enlarged 1.4x or more to MNIST's 20: soft strokes
INK_MEDIAN = 0.9  # MNIST's median ink value (pixels over 0.12, per image; median over 20,000 training images: 0.906)


@dataclass
class Prepared:
    """What prepare() found in one picture.

    image: uint8 (28, 28), MNIST-style (ink bright on black, fit to 20x20, centred by mass); all zeros
    when status is "empty". status: "digit" | "empty" | "several_digits". marks: digit-sized marks found.
    boxes: each digit-sized mark's [x0, y0, x1, y1] in the original picture's pixels (x1, y1 exclusive).
    ink: float32 (H', W') in 0..1, the ink map at the working scale `scale` (original px per working px)."""

    image: np.ndarray
    status: str = "digit"
    marks: int = 1
    boxes: list[list[int]] = field(default_factory=list)
    ink: np.ndarray | None = field(default=None, repr=False)
    scale: float = 1.0


def prepare(picture: Any) -> Prepared:
    """Prepare one decoded picture for the model.

    picture: a PIL image, or a NumPy array (H, W) grey or (H, W, 3|4) RGB(A), uint8 0..255 or float 0..1.
    Returns a Prepared record (see its docstring). Raises ImageError for a picture that is not 2-D or
    holds NaN/infinite values."""
    g = grey(_bounded(picture))
    for candidate in (g, 1.0 - g) if g.shape == (28, 28) else ():  # MNIST-like, either polarity
        if is_mnist_like(candidate):
            image = _unit(candidate * 255.0, 255).round().astype(np.uint8)
            ink = image.astype(np.float32) / 255.0
            return _record(image, find_marks(ink, image > 0), 1.0, ink)
    ink, scale = ink_map(g)
    pieces = find_marks(ink, ink > 0)
    if not pieces and scale > FINE_SIDE / WORK_SIDE:  # a small digit on a big page can fade out when shrunk
        ink, scale = ink_map(g, FINE_SIDE)
        pieces = find_marks(ink, ink > 0, stroke=0.05 * WORK_SIDE / FINE_SIDE)
    if not pieces:
        return _record(np.zeros((28, 28), np.uint8), [], scale, ink)
    crop, crop_scale = _kept_ink(ink, pieces), scale
    if scale > 1.5 and len(pieces) == 1:
        finer = _finer_crop(g, _union(pieces[0]), scale)
        crop, crop_scale = (crop, scale) if finer is None else (finer, 1.0)
    return _record(to_28x28(crop, max(crop.shape) * crop_scale), pieces, scale, ink)


def _unit(a: np.ndarray, top: float = 1.0) -> np.ndarray:
    """a (a float array made here, free to overwrite) clipped to 0..top in place: np.clip's result
    without its Python overhead, which cost more than the arithmetic on these small pictures."""
    np.maximum(a, 0, out=a)
    return np.minimum(a, top, out=a)


def _kept_ink(ink: np.ndarray, pieces: list[list[tuple[int, int, int, int]]]) -> np.ndarray:
    """The ink of the marks' pieces (specks elsewhere dropped), cropped to their union."""
    x0, y0, x1, y1 = _union([p for group in pieces for p in group])
    keep = np.zeros(ink.shape, bool)
    for group in pieces:
        for bx0, by0, bx1, by1 in group:
            keep[by0:by1, bx0:bx1] = True
    return np.where(keep, ink, 0)[y0:y1, x0:x1]


def _finer_crop(g: np.ndarray, box: tuple[int, int, int, int], scale: float) -> np.ndarray | None:
    """A small digit on a big picture is only a few pixels tall at the working scale: prepare the region
    around it again at the picture's own resolution (the region's paper and ink are measured afresh)."""
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    m = max(x1 - x0, y1 - y0)
    r0, r1 = max(0, y0 - m), min(g.shape[0], y1 + m)
    c0, c1 = max(0, x0 - m), min(g.shape[1], x1 + m)
    region = g[r0:r1, c0:c1]
    if max(region.shape) >= max(g.shape) * 0.9:
        return None  # the digit fills the picture: the working scale had enough pixels
    ink, s = ink_map(region)
    # Only what the working scale found is the digit: a form's frame or a ruled line beside it, dropped
    # there, can be cut into pieces by the region's edges and pass for strokes here.
    keep = np.zeros(ink.shape, bool)
    pad = scale + 1
    keep[max(0, math.floor((y0 - r0 - pad) / s)):math.ceil((y1 - r0 + pad) / s),
         max(0, math.floor((x0 - c0 - pad) / s)):math.ceil((x1 - c0 + pad) / s)] = True
    ink = np.where(keep, ink, np.float32(0))
    pieces = find_marks(ink, ink > 0)
    if len(pieces) != 1:
        return None
    return _kept_ink(ink, pieces)


def _bounded(picture: Any) -> Any:
    """An array picture of more than BIG_ARRAY pixels, box-averaged in its own dtype first: its float copy
    would otherwise take gigabytes (files are bounded when decoded, arrays arrive as they are)."""
    if not isinstance(picture, np.ndarray) or picture.ndim not in (2, 3) \
            or picture.shape[0] * picture.shape[1] <= BIG_ARRAY:
        return picture
    a = picture.astype(np.uint8) if picture.dtype == bool else picture
    if a.dtype not in (np.uint8, np.uint16, np.float32, np.float64) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        return picture  # grey() names what is wrong with it
    f = (BIG_ARRAY / (a.shape[0] * a.shape[1])) ** 0.5
    size = (max(1, int(a.shape[1] * f)), max(1, int(a.shape[0] * f)))
    return cv2.resize(a, size, interpolation=cv2.INTER_AREA)


def _record(image: np.ndarray, pieces: list[list[tuple[int, int, int, int]]], scale: float,
            ink: np.ndarray) -> Prepared:
    boxes = [[int(v * scale) if i < 2 else int(np.ceil(v * scale)) for i, v in enumerate(_union(group))]
             for group in pieces]
    status = "empty" if not pieces else "several_digits" if len(pieces) > 1 else "digit"
    return Prepared(image=image, status=status, marks=len(pieces), boxes=boxes, ink=ink, scale=scale)


def is_mnist_like(g: np.ndarray) -> bool:
    """A (28, 28) grey picture (0..1) that MNIST's own recipe could have made: a black ground, ink bright,
    its bounding box within 20x20 (22 allowing anti-aliased fringes) and its centre of mass within 1 px
    of (14, 14). Such pictures are passed to the model untouched."""
    return g.shape == (28, 28) and bool(mnist_like_batch(g[None])[0])


def ink_map(g: np.ndarray, work_side: int = WORK_SIDE, bright: bool | None = None) -> tuple[np.ndarray, float]:
    """Ink contrast (float32 0..1, 0 = paper) at a working scale, and that scale (original px per working
    px). g: grey picture, float32 0..1 on its own range, any polarity, lighting and paper. work_side: the
    longest working side in px (a wide picture of several digits needs more than one digit does).
    bright: the ink's polarity when already known (ink_polarity at a coarser scale), else judged here."""
    g, scale = _working(g, work_side)
    bright = _ink_is_bright(g) if bright is None else bright
    inv = g if bright else 1.0 - g
    # The paper: an opening (min then max filter) wider than any stroke removes the ink and keeps the
    # light's slow changes and the sharp edges of shadows; a quarter of the short side is wider than
    # any stroke of a digit that fits in the picture.
    k = max(3, (min(g.shape) // 4) | 1)
    # (on 8 bits: OpenCV's min/max filters are several times faster there, and 1/255 is below any ink;
    # the edge is repeated beyond the picture, which carries the light's slope on: a ramp stays paper)
    padded = cv2.copyMakeBorder((inv * 255).astype(np.uint8), k, k, k, k, cv2.BORDER_REPLICATE)
    box = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    paper8 = cv2.erode(padded, box)  # the opening: erosion, then dilation (MORPH_OPEN's two steps) ...
    lo, hi = cv2.minMaxLoc(paper8)[:2]
    if lo != hi:  # ... which cannot change a flat erosion (a drawing app's plain canvas)
        paper8 = cv2.dilate(paper8, box)
    paper = np.multiply(paper8[k:-k, k:-k], np.float32(1 / 255), dtype=np.float32)
    contrast = inv - paper
    if not bright:  # dark ink on paper: contrast relative to the paper's local brightness
        contrast = contrast / np.maximum(1.0 - paper, 0.02)
    else:  # bright ink on a dark ground: relative to the picture's own range, which must itself be
        # more than quantisation noise (a few grey levels of 8 bits is a black picture, not faint ink)
        span = float(inv.max() - np.median(paper))
        if span < MIN_CONTRAST / 4:
            return np.zeros_like(inv), scale
        contrast = contrast / span
    contrast = _unit(contrast.astype(np.float32, copy=False))
    level, noise = _robust_level(contrast)  # the paper's texture: what pure noise leaves above its minimum
    peak = float(contrast.max())  # of a blurred picture: one hot pixel does not make a peak
    if peak < MIN_CONTRAST or peak - level < MIN_SNR * noise:
        return np.zeros_like(contrast), scale
    # Threshold: well above the paper's texture and a third of the ink's own peak (anti-aliased edges
    # keep their grey levels above it).
    t = max(level + 4.0 * noise, peak / 3.0, MIN_CONTRAST / 2)
    # A form's frames first (ruled paper's test would take a wide frame's two long sides for ruled lines and
    # leave its short ones), then ruled or squared paper's lines, then lone lines (which ruled paper's
    # would be, each alone; _drop_lines keeps the strokes lying on them).
    contrast = _drop_frames(_drop_lines(_drop_frames(contrast, t), t), t, rules=True)
    ink = _unit((contrast - t / 2) / (peak - t / 2))
    ink[contrast < t] = 0
    return ink.astype(np.float32, copy=False), scale


def ink_polarity(g: np.ndarray, work_side: int = WORK_SIDE) -> bool:
    """Whether the ink is brighter than the paper, judged as ink_map judges it at work_side. A map of the
    same picture made finer (a small number on a big page) takes it from the coarser scale: there the
    ink is a larger share of the pixels, while a finer map's few ink pixels can leave the judgement to
    5x5 top-hats that see the gaps inside bold strokes rather than the strokes."""
    return _ink_is_bright(_working(g, work_side)[0])


def _working(g: np.ndarray, work_side: int) -> tuple[np.ndarray, float]:
    """g at the working scale, lightly blurred, and that scale (original px per working px)."""
    h, w = g.shape
    # Shrunk only when well over the working side (up to 1.25x it is worked on as it is: resizing would
    # cost more than it saves; a 280-px canvas is shrunk, and that area resize is a third of its preparation),
    # enlarged when small.
    scale = max(h, w) / work_side if max(h, w) > 1.25 * work_side else min(1.0, min(h, w) / SMALL_SIDE)
    if scale > 1:
        g, scale = _shrink(g, scale)
    elif scale < 1:  # small pictures (a canvas shrunk to 28x28): enlarged, so a 3x3 step is not a stroke
        g = cv2.resize(g, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_CUBIC)
        g = _unit(g)
    return cv2.GaussianBlur(g, (3, 3), 0), scale  # sensor noise and JPEG blocks, finer than any stroke here


def _shrink(g: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """g (H, W) area-averaged down by about scale (> 1), and the scale it was: by the whole factor below
    scale when that leaves at most 1.25x the pixels asked for (the tolerance ink_map already grants a
    picture it does not shrink), else by scale itself. OpenCV has a fast path for whole factors: a 280-px
    canvas to 140 px took 0.013 ms, where its general area resize to 128 px took 0.15-0.28 ms (and a 12 MP
    photo 7 ms instead of 29). The rows and columns beyond the last whole block (fewer than the factor,
    at the far edges) are dropped, so boxes scale back exactly."""
    h, w = g.shape
    f = int(scale)
    if f >= 2 and scale / f <= 1.25 and min(h, w) >= f:  # (a sliver narrower than f keeps the general path)
        return cv2.resize(g[:h - h % f, :w - w % f], (w // f, h // f), interpolation=cv2.INTER_AREA), float(f)
    return cv2.resize(g, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA), scale


def _ink_is_bright(g: np.ndarray) -> bool:
    """The border is paper (shadowed or lit); ink is what departs from the border's range. When the darkest
    or the brightest 0.5% of pixels lie clearly beyond it (CLEAR_TAIL of the grey range: dark ink on
    paper, chalk on a board, a garment on its ground), the farther tail is the ink. A smaller departure
    can be the paper's own light (a vignette's bright centre beyond a darker border, a shadow across the
    border) or ink under 0.5% of the picture (a small digit on a page, specks of dust), faint ink: then
    each pixel's paper is the median of its surroundings half the picture wide (ink is a minority
    there; a median follows a shadow's edge and smooth light, and a loop's inside is paper, where a
    morphological top-hat of that width would call it bright ink), and the ink is the farther of the
    darkest and brightest departures from it (the picture is blurred: one hot pixel is no departure)."""
    k = max(1, min(g.shape) // 20)
    s = max(1, min(g.shape) // 64)  # a sample is enough for percentiles
    border = np.concatenate([g[:k:s, ::s].ravel(), g[-k::s, ::s].ravel(), g[::s, :k:s].ravel(), g[::s, -k::s].ravel()])
    b_lo, b_hi = _quantiles(border, 0.05, 0.95)
    sample = g[:: max(1, g.shape[0] // 96), :: max(1, g.shape[1] // 96)].ravel()
    lo, hi = _quantiles(sample, 0.005, 0.995)
    if max(hi - b_hi, b_lo - lo) >= CLEAR_TAIL:
        return hi - b_hi > b_lo - lo
    grey = (g * 255).round().astype(np.uint8)  # (OpenCV's wide median filter needs 8 bits)
    departure = grey.astype(np.int16) - cv2.medianBlur(grey, max(5, min(g.shape) // 2 | 1))
    return int(departure.max()) > -int(departure.min())


def _quantiles(x: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Two quantiles of a 1-D sample by partial sorting (nearest rank): np.percentile's bookkeeping
    cost more than the rest of a canvas's preparation."""
    n = len(x) - 1
    i, j = round(low * n), round(high * n)
    lo, hi = x.min(), x.max()  # a clean canvas: both tails are runs of its extreme values, no sort needed
    if np.count_nonzero(x == lo) > i and np.count_nonzero(x == hi) > n - j:
        return float(lo), float(hi)
    part = np.partition(x, (i, j))
    return float(part[i]), float(part[j])


def _robust_level(a: np.ndarray) -> tuple[float, float]:
    """The median of a mostly-background map and its noise: 1.4826 x the median absolute deviation."""
    sample = a[:: max(1, a.shape[0] // 96), :: max(1, a.shape[1] // 96)].ravel()
    # A clean background (a drawing app's canvas) is mostly exact zeros: then the median and its
    # deviation are 0, which partitioning a sample full of equal values found slowly.
    if len(sample) - np.count_nonzero(sample) > round(0.5 * (len(sample) - 1)) and sample.min() >= 0:
        return 0.0, 0.0
    med = _quantiles(sample, 0.5, 0.5)[0]
    return med, 1.4826 * _quantiles(np.abs(sample - med), 0.5, 0.5)[0]


def _drop_lines(contrast: np.ndarray, t: float) -> np.ndarray:
    """Remove families of ruled lines from a contrast map (threshold t): two or more parallel straight
    lines (within 6 degrees of horizontal or vertical) that each cross 75% of the picture and are thin
    beside it. A digit's own long stroke (the bar of a 7, the stem of a tightly cropped 1) is alone in
    its direction and stays."""
    mask = (contrast > t / 2).view(np.uint8)  # faint parts of the lines too, so they come out whole
    h, w = mask.shape
    if min(h, w) < 16:
        return contrast
    _, _, ink_w, ink_h = cv2.boundingRect(mask)  # all the ink's extent bounds each piece's
    if ink_w < 0.75 * w and ink_h < 0.75 * h:
        return contrast
    n, _, stats, _ = _components(mask)
    if not ((stats[1:, cv2.CC_STAT_WIDTH] >= 0.75 * w) | (stats[1:, cv2.CC_STAT_HEIGHT] >= 0.75 * h)).any():
        return contrast  # nothing crosses the picture: the common case, and cheap
    lines = np.zeros_like(mask)
    for transpose in (False, True):  # rows for horizontal lines, then columns for vertical ones
        m = mask.T if transpose else mask
        found = _line_family(m)
        if found is not None:
            lines |= found.T if transpose else found
    if not lines.any():
        return contrast
    # Ink that crosses a line darkens it further (light is absorbed by both): a pixel of the line's band
    # whose contrast exceeds the line's core by half the ink's contrast is ink, and stays (a 7's bar lying
    # on a ruled line). Contrasts add as 1 - (1 - line)(1 - ink). The core: the line mask's 90th
    # percentile (its median is pulled down by the soft edges a resize leaves, and a black printed box
    # was then taken for ink).
    line_level = float(np.percentile(contrast[lines > 0], 90))
    off_lines = contrast[(lines == 0) & (contrast > t)]
    ink_level = float(np.percentile(off_lines, 90)) if off_lines.size else line_level
    over_ink = contrast > line_level + 0.5 * ink_level * (1.0 - line_level)
    lines = cv2.dilate(lines, np.ones((3, 3), np.uint8))
    kept = np.where((lines > 0) & ~over_ink, 0, contrast).astype(np.float32)
    # Strokes that crossed a line are cut by it: close gaps as wide as the lines were.
    return cv2.morphologyEx(kept, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))


def _drop_frames(contrast: np.ndarray, t: float, rules: bool = False) -> np.ndarray:
    """Remove what forms print around a field: frames (a box, a row of boxes sharing sides, a table), and
    with rules, the lone ruled lines left once ruled paper's families are gone (a field's rule under or
    over a number, a notebook's margin line; a box drawn on ruled paper is a frame only then, so the last
    pass looks for frames too). A frame is a piece whose four sides are straight lines (within FRAME_TILT
    degrees of level and upright, across 90% of the piece); it goes when it holds other ink (the digits,
    touching it or not), or when its lines are thinner than 8% of its short side (an empty form box is
    empty; a 0 drawn as a rectangle has bolder strokes). A rule is a lone straight line, level or upright,
    10 times as long as thick and 1.6 times as long as the tallest other mark is tall (a dash, a 1 or a 7's
    bar is no longer than a digit: _is_rule). Only the frame's lines go: ink that touches them keeps the
    rest of its strokes."""
    # Faint thin lines break into dashes at the ink threshold: frames are looked for at a lower one, closed;
    # rules at the ink's own, closed along the line only (a rule a few pixels under the digits would join
    # them at the lower threshold and be no lone line).
    low, kernel = (t / 2, np.ones((1, 5), np.uint8)) if rules else (t / 4, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx((contrast > low).view(np.uint8), cv2.MORPH_CLOSE, kernel)
    n, labels, stats, _ = _components(mask)
    if n <= 1:
        return contrast
    extent = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
    order = np.argsort(-extent)[:FRAMES_LOOKED_AT] + 1
    heights = stats[1:, cv2.CC_STAT_HEIGHT]
    drop = np.zeros(mask.shape, bool)
    for i in order.tolist():
        x, y, w, h = (int(v) for v in stats[i, :4])
        if max(w, h) < max(12, 0.1 * min(mask.shape)):
            break  # the rest are smaller still
        piece = (labels[y:y + h, x:x + w] == i).view(np.uint8)
        lines = _frame_lines(piece, piece & (contrast[y:y + h, x:x + w] > t / 2).view(np.uint8))
        if lines is None:
            others = float(np.delete(heights, i - 1).max(initial=0)) if rules else 0.0
            drop[y:y + h, x:x + w] |= (piece > 0) & bool(others and _is_rule(piece, others, mask.shape[0]))
            continue
        drawn, thickness = lines
        if np.count_nonzero(mask[y:y + h, x:x + w] & ~drawn) < 0.02 * w * h and thickness > 0.08 * min(w, h):
            continue  # an empty rectangle of bold strokes: a 0 drawn square, not a printed box
        drop[y:y + h, x:x + w] |= drawn
    return np.where(drop, np.float32(0), contrast) if drop.any() else contrast


def _upright(piece: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """piece (uint8 0/1) turned level by the tilt of its minimum-area rectangle (OpenCV), padded so that
    nothing is cut, and the affine matrix that turns it back; None if it tilts more than FRAME_TILT."""
    (cx, cy), _, angle = cv2.minAreaRect(cv2.findNonZero(piece))
    angle = (angle + 45) % 90 - 45  # its tilt from level or upright (OpenCV's convention varies by version)
    if abs(angle) > FRAME_TILT:
        return None
    pad = 2 + math.ceil(math.tan(math.radians(FRAME_TILT)) * max(piece.shape))
    padded = cv2.copyMakeBorder(piece, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    turn = cv2.getRotationMatrix2D((cx + pad, cy + pad), angle, 1.0)
    return cv2.warpAffine(padded, turn, padded.shape[::-1], flags=cv2.INTER_NEAREST), turn


def _frame_lines(piece: np.ndarray, solid: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(the pixels of piece (uint8 0/1, one connected piece cropped to its box) on its straight lines, as
    bool, and their thickness in px) if its four sides are such lines, else None. The piece is turned
    level first (a form photographed askew); its sides are rows and columns in its outer fifths that are
    90% ink, and inside them a comb's or a table's inner sides are those 97% solid ink across the inside
    (solid: the piece's pixels at the ink threshold itself, where a digit that only comes near both sides
    of a tight cell is apart from them; _inner_lines)."""
    h, w = piece.shape
    if min(h, w) < 8 or _holes(piece) < 0.3 * h * w:
        return None  # (cheap first: a frame's insides, its cells, are most of its box; a 0's or an 8's are not)
    turned = _upright(piece)
    if turned is None:
        return None
    level, turn = turned
    ys, xs = np.nonzero(level)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = level[y0:y1, x0:x1]
    pad = (level.shape[0] - h) // 2
    solid = cv2.warpAffine(cv2.copyMakeBorder(solid, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0), turn,
                           level.shape[::-1], flags=cv2.INTER_NEAREST)[y0:y1, x0:x1]
    # (a line of 1-2 px wobbles by a pixel once turned: each is looked at 3 px wide across its length)
    across, down = cv2.dilate(box, np.ones((3, 1), np.uint8)), cv2.dilate(box, np.ones((1, 3), np.uint8))
    bh, bw = box.shape
    top, bottom = _side(across.mean(axis=1)), _side(across.mean(axis=1)[::-1])
    left, right = _side(down.mean(axis=0)), _side(down.mean(axis=0)[::-1])
    if not (top and bottom and left and right) or bh - top - bottom < bh / 2 or bw - left - right < bw / 2 \
            or box[top:bh - bottom, left:bw - right].mean() > 0.75:
        return None  # a side missing, or no room inside: not a frame (one thick line, a blot, a digit)
    grid_rows = _inner_lines(across[:, left:bw - right].mean(axis=1), top, bottom)
    grid_cols = _inner_lines(down[top:bh - bottom].mean(axis=0), left, right)
    if len(_runs(grid_rows[top + 2:bh - bottom - 2])) >= 2 and len(_runs(grid_cols[left + 2:bw - right - 2])) >= 2:
        return None  # inner lines both ways: squared paper's grid (left to _drop_lines), not a field
    rows = _inner_lines(cv2.dilate(solid, np.ones((3, 1), np.uint8))[:, left:bw - right].mean(axis=1), top, bottom)
    cols = _inner_lines(cv2.dilate(solid, np.ones((1, 3), np.uint8))[top:bh - bottom].mean(axis=0), left, right)
    lines = np.zeros_like(level)
    lines[y0:y1, x0:x1] = (rows[:, None] | cols[None, :]) & (box > 0)
    lines = cv2.dilate(lines, np.ones((3, 3), np.uint8))
    back = cv2.warpAffine(lines, cv2.invertAffineTransform(turn), lines.shape[::-1], flags=cv2.INTER_NEAREST)
    return (back[pad:pad + h, pad:pad + w] > 0) & (piece > 0), float(top)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """The runs of True in a 1-D bool array, as (start, end) index pairs, end exclusive."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.view(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _holes(piece: np.ndarray) -> float:
    """The area (px) of the holes in a piece (uint8 0/1): the insides of its closed loops (OpenCV contours)."""
    contours, hierarchy = cv2.findContours(piece, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return 0.0
    return float(sum(cv2.contourArea(c) for c, link in zip(contours, hierarchy[0], strict=True) if link[3] >= 0))


def _side(cover: np.ndarray) -> int:
    """How far the frame's side reaches in from the start of cover (rows or columns of a levelled piece,
    ink cover 0..1): to the end of the first run of lines 90% ink, which must begin in the outer fifth
    (a comb's first cell, or a digit in it, lies beyond); 0 if there is none."""
    found = np.flatnonzero(cover[:max(1, len(cover) // 5)] >= 0.9)
    if not found.size:
        return 0
    gaps = np.flatnonzero(cover[found[0]:] < 0.9)
    return int(found[0] + (gaps[0] if gaps.size else len(cover) - found[0]))


def _inner_lines(cover: np.ndarray, start: int, end: int) -> np.ndarray:
    """The rows (or columns) of a frame that are its lines, from their solid ink cover over the inside
    (0..1): its sides (the first `start` and last `end`) with up to 2 neighbours a third covered (soft or
    uneven edges), and inner sides 97% covered and as thin as the sides (plus 2 for the edges: a comb's
    or a table's inner sides are printed like its outer ones and run whole from one side to the other; a
    digit's stroke that touches both is bolder)."""
    n = len(cover)
    core = cover >= 0.97
    core[:start] = core[n - end:] = True
    lines = (cv2.dilate(core.astype(np.uint8)[:, None], np.ones((5, 1), np.uint8))[:, 0] > 0) & (cover >= 0.3)
    lines[:start] = lines[n - end:] = True
    for a, b in _runs(lines):
        if a >= start + 2 and b <= n - end - 2 and b - a > max(start, end) + 2:
            lines[a:b] = False
    return lines


def _is_rule(piece: np.ndarray, tallest_other: float, map_height: int) -> bool:
    """Whether piece (uint8 0/1) is a ruled line: a field's rule under or over a number, a notebook's margin
    line beside it. Straight, level or upright (its minimum-area rectangle within FRAME_TILT degrees, 60%
    filled), 10 times as long as thick and 1.6 times as long as the tallest other piece is tall, which
    must be a mark, 3 times the line's thickness (the bars of an "=", a dash are no rule); upright, it
    must also cross 75% of the map's height (a long straight 1 beside a shorter digit is no margin)."""
    if min(piece.shape) > 0.25 * max(piece.shape):
        return False  # (cheap first: a line within FRAME_TILT of level or upright has a thin box)
    if piece.shape[0] > piece.shape[1] and piece.shape[0] < 0.75 * map_height:
        return False
    (_, _), (rw, rh), angle = cv2.minAreaRect(cv2.findNonZero(piece))
    length, thick = max(rw, rh), max(1.0, min(rw, rh))
    return (abs((angle + 45) % 90 - 45) <= FRAME_TILT and length >= 10 * thick and length >= 1.6 * tallest_other
            and tallest_other >= 3 * thick and np.count_nonzero(piece) >= 0.6 * rw * rh)


def _line_family(m: np.ndarray) -> np.ndarray | None:
    """A mask of the near-horizontal lines in m (uint8 0/1) if there are two or more, else None.
    The tilt is found by shearing rows over -6..6 degrees and keeping the sharpest row profile."""
    h, w = m.shape
    # The tilt is searched on a copy 4x smaller (a line's mass per row survives area-averaging), then
    # the rows are profiled once at full size.
    small = cv2.resize(m.astype(np.float32), (max(8, w // 4), max(8, h // 4)), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape
    best = (-1.0, 0.0)
    for deg in np.arange(-6, 6.5, 1.0):
        t = np.tan(np.radians(deg))
        sheared = cv2.warpAffine(small, np.float32([[1, 0, 0], [t, 1, -t * sw / 2]]), (sw, sh))
        score = float((sheared.sum(axis=1) ** 2).sum())
        if score > best[0]:
            best = (score, deg)
    deg = best[1]
    t = np.tan(np.radians(deg))
    profile = cv2.warpAffine(m, np.float32([[1, 0, 0], [t, 1, -t * w / 2]]), (w, h),
                             flags=cv2.INTER_NEAREST).sum(axis=1) / w
    rows = profile >= 0.75
    # Runs of line rows are lines; each must be thin (under 3% of the picture's height: ruled lines and
    # printed boxes are; a digit's strokes in a tight crop are 5-15%).
    runs = [(a, b) for a, b in _runs(rows) if b - a <= max(2, 0.03 * h)]
    # Two lines of a family lie apart (ruled paper: 5% of the picture or more); runs closer than that
    # are one wavy stroke, such as a 7's bar.
    apart = sum(1 for (_, b0), (a1, _) in zip(runs, runs[1:], strict=False) if a1 - b0 >= 0.05 * h)
    if apart < 1:
        return None
    sheared_lines = np.zeros((h, w), np.uint8)
    for a, b in runs:
        sheared_lines[a:b] = 1
    unshear = np.float32([[1, 0, 0], [-t, 1, t * w / 2]])
    return cv2.warpAffine(sheared_lines, unshear, (w, h), flags=cv2.INTER_NEAREST) & m


def find_marks(ink: np.ndarray, mask: np.ndarray, stroke: float = 0.05, stack_gap: float | None = None
               ) -> list[list[tuple[int, int, int, int]]]:
    """The digit-sized marks in an ink map, left to right; each mark is a list of piece boxes
    (x0, y0, x1, y1) in ink-map pixels. Pieces overlapping horizontally by a third of the narrower one
    are one mark (a 5's bar, a broken 4 or 8; with stack_gap, only those at most stack_gap of the taller's
    height apart: a number's reader passes MARK_GAP, so that a caption under it stays apart); pieces and
    marks much smaller than the largest are specks.
    stroke: the fraction of the map's short side a mark's longest piece must span (a finer map of the same
    picture passes a smaller one, so that the bound stays the same size on the picture)."""
    mask = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)
    n, _, stats, _ = _components(mask)
    if n <= 1:
        return []
    # Pieces with under 5% of the largest piece's ink are specks (dust, the fringe of a shadow's edge):
    # neither part of a mark nor one.
    pieces = stats[1:].tolist()  # (Python ints: walking NumPy rows one by one cost more than the search)
    floor = 0.05 * max(p[cv2.CC_STAT_AREA] for p in pieces)
    boxes = sorted((x, y, x + bw, y + bh, a) for x, y, bw, bh, a in pieces if a >= floor)
    groups: list[list[tuple[int, int, int, int, int]]] = []
    for b in boxes:
        for g in groups:
            gx0, gy0, gx1, gy1 = _union(g)
            overlap = min(gx1, b[2]) - max(gx0, b[0])
            gap = max(b[1] - gy1, gy0 - b[3])  # (a caption under a number shares its columns)
            near = stack_gap is None or gap <= stack_gap * max(gy1 - gy0, b[3] - b[1])
            if overlap >= min(gx1 - gx0, b[2] - b[0]) / 3 and near:
                g.append(b)
                break
        else:
            groups.append([b])
    sizes = [(_union(g), sum(p[4] for p in g)) for g in groups]
    tallest = max(u[3] - u[1] for u, _ in sizes)
    largest = max(a for _, a in sizes)
    side = min(mask.shape)
    # A mark is digit-sized when it is at least half as tall as the tallest, has a tenth of its ink,
    # and is not a speck beside the picture (3% of its short side, and 4 px at the working scale); nor
    # is a group of specks only (dust in one column is stacked into one tall group): its longest piece
    # must span 5% of the short side (a 2 px speck of dust on a 160 px photo is 4-6 px once blurred; a
    # digit's strokes, even broken, are longer than a third of the digit).
    speck = max(4, 0.03 * side)
    stroke = max(4, stroke * side)
    marks = [g for g, (u, a) in zip(groups, sizes, strict=True)
             if u[3] - u[1] >= 0.5 * tallest and a >= 0.1 * largest and max(u[2] - u[0], u[3] - u[1]) >= speck
             and max(max(p[2] - p[0], p[3] - p[1]) for p in g) >= stroke]
    return [[p[:4] for p in g] for g in marks]


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """cv2.connectedComponentsWithStats(mask, 8-connected) by Grana's block-based algorithm (BBDT): the
    same components as OpenCV's default (Spaghetti), in 0.05 ms instead of 0.11 on a 140x140 canvas map
    (measured; the labels may be numbered differently, and every use here sorts or tests all of them)."""
    return cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_BBDT)


def _union(boxes) -> tuple[int, int, int, int]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def to_28x28(crop: np.ndarray, source_side: float | None = None) -> np.ndarray:
    """MNIST's recipe on an ink crop (float 0..1, ink bright, tight around the digit): strokes thickened
    to MNIST's width, the longer side fit to 20 px (area-averaged), centred by mass in 28x28. uint8.
    source_side: the crop's longer side in the original picture's pixels (default: the crop's own); under
    SOFT_SIDE, the digit was enlarged and its soft strokes are given MNIST's profile (_saturate)."""
    crop = _thicken(crop)
    h, w = crop.shape
    f = 20.0 / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    patch = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    peak = float(patch.max())
    if peak <= 0:
        return np.zeros((28, 28), np.uint8)
    patch = _unit(patch / peak)
    if (max(h, w) if source_side is None else source_side) < SOFT_SIDE:  # enlarged: interpolation softened them
        patch = _saturate(patch)
    mass = float(patch.sum())
    ph, pw = patch.shape
    cy = float(patch.sum(axis=1) @ np.arange(ph)) / mass
    cx = float(patch.sum(axis=0) @ np.arange(pw)) / mass
    top = min(max(round(MASS_CENTER - cy), 0), 28 - ph)
    left = min(max(round(MASS_CENTER - cx), 0), 28 - pw)
    out = np.zeros((28, 28), np.float32)
    out[top:top + ph, left:left + pw] = patch
    return (out * 255.0).round().astype(np.uint8)


def _saturate(patch: np.ndarray) -> np.ndarray:
    """Strokes with MNIST's profile: a digit enlarged from a few pixels (a canvas shrunk to 28x28, a small
    crop) has soft strokes whose cores never reach full ink, where MNIST's do (its median ink pixel is
    0.9 of full). Levels are stretched until the median ink pixel is INK_MEDIAN; never dimmed."""
    ink = patch[patch > MIN_CONTRAST]
    if ink.size == 0:
        return patch
    median = float(np.median(ink))
    if median >= INK_MEDIAN:
        return patch
    return _unit(patch * (INK_MEDIAN / median))


def _thicken(crop: np.ndarray) -> np.ndarray:
    """Thin pen strokes would shrink to faint hairlines at 20 px, where MNIST's are ~2.2 px wide:
    measure the stroke width (2 x area / boundary) and dilate until it is at least 70% of that."""
    if max(crop.shape) > 100:  # a long side of ~100 px is plenty to measure and dilate
        f = 100.0 / max(crop.shape)
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                          interpolation=cv2.INTER_AREA)
        crop = crop / max(float(crop.max()), 1e-6)
    target = 0.7 * 2.2 * max(crop.shape) / 20
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(8):
        mask = (crop > 0.4).view(np.uint8)
        area = cv2.countNonZero(mask)
        if not area:
            break
        boundary = area - cv2.countNonZero(cv2.erode(mask, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0))
        if 2.0 * area / max(1, boundary) >= target:
            break
        crop = cv2.dilate(cv2.copyMakeBorder(crop, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), kernel)
    return crop


def check_2d(g: np.ndarray, what: str = "picture") -> None:
    """Raise ImageError unless g is a non-empty 2-D array of finite values."""
    if g.ndim != 2 or min(g.shape) < 1:
        raise ImageError(f"{what}: expected a 2-D picture, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise ImageError(f"{what}: holds NaN or infinite values; expected finite pixel values")


def model_inputs(images: Any) -> np.ndarray:
    """What the Python API accepts, as the model's uint8 (N, 28, 28) inputs, each through prepare().

    images: a NumPy array or torch tensor of shape (28, 28), (N, 28, 28), (N, 28, 28, 1) or (N, 1, 28, 28),
    uint8 0..255 or float 0..1 (any polarity: MNIST-like inputs pass unchanged, others are prepared like
    photos); or one PIL image or file path; or a list/tuple of any of these (arrays of any size, each
    one picture). Raises ImageError naming the shape, dtype or file that is not acceptable."""
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # a torch tensor, without importing torch
        images = _tensor_to_numpy(images)
    if isinstance(images, np.ndarray):
        return _prepare_batch(_split_batch(images))
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "getbands"):
        images = [images]
    if isinstance(images, (list, tuple)):
        out = [prepare(_one_picture(im, f"images[{i}]")).image for i, im in enumerate(images)]
        return np.stack(out) if out else np.zeros((0, 28, 28), np.uint8)
    raise ImageError(f"images: expected a NumPy array, torch tensor, PIL image, file path or a list of them, "
                     f"got {type(images).__name__}")


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A torch tensor as NumPy; bfloat16 and float16 (which NumPy lacks or mishandles) as float32."""
    t = t.detach().cpu()
    if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
        t = t.float()
    return t.numpy()


def _prepare_batch(a: np.ndarray) -> np.ndarray:
    """prepare() over a (N, 28, 28) batch; the MNIST-like ones (all of a dataset's) are found at once."""
    x = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else grey(a.reshape(-1, 28)).reshape(a.shape)
    out = _unit(x * 255.0, 255).round().astype(np.uint8)
    for i in np.flatnonzero(~mnist_like_batch(x)):
        out[i] = prepare(x[i]).image
    return out


def mnist_like_batch(x: np.ndarray) -> np.ndarray:
    """is_mnist_like() for each of a float (N, 28, 28) batch in 0..1, vectorised: bool (N,)."""
    if not len(x):
        return np.zeros(0, bool)
    n = len(x)
    mass = x.sum(axis=(1, 2))
    ink = x > 0.1
    idx = np.arange(28)

    def extent(m: np.ndarray) -> np.ndarray:  # rows (or columns) from the first to the last holding ink
        return np.where(m.any(axis=1), 28 - m.argmax(axis=1) - m[:, ::-1].argmax(axis=1), 0)

    safe = np.maximum(mass, 1e-6)
    cy, cx = x.sum(axis=2) @ idx / safe, x.sum(axis=1) @ idx / safe
    # The median of the 784 values, as np.median takes it (the mean of the middle two), without its
    # Python bookkeeping: it cost more than the rest of this test.
    middle = np.partition(x.reshape(n, -1), (391, 392), axis=1)
    median = (middle[:, 391] + middle[:, 392]) / 2
    # MNIST (all 70,000): bounding box <= 20x20, centre of mass in 13.48..14.5, mostly black.
    return ((median < 0.1) & (mass >= 1.0) & (extent(ink.any(axis=2)) <= 22)
            & (extent(ink.any(axis=1)) <= 22) & (np.abs(cy - 14.0) <= 1.0) & (np.abs(cx - 14.0) <= 1.0))


def _split_batch(a: np.ndarray) -> np.ndarray:
    shapes = "(28, 28), (N, 28, 28), (N, 28, 28, 1) or (N, 1, 28, 28)"
    if a.ndim == 2 and a.shape == (28, 28):
        a = a[None]
    elif a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    elif a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise ImageError(f"images: shape {a.shape}; expected {shapes} (a list holds pictures of any size)")
    if not (a.dtype == np.uint8 or a.dtype == bool or np.issubdtype(a.dtype, np.floating)):
        raise ImageError(f"images: dtype {a.dtype}; expected uint8 0..255 or float 0..1")
    return a


def _one_picture(item: Any, where: str) -> Any:
    if isinstance(item, (str, os.PathLike)):
        return decode(item)
    if hasattr(item, "detach") and hasattr(item, "cpu"):
        item = _tensor_to_numpy(item)
    if isinstance(item, np.ndarray) and item.ndim == 3 and 1 in (item.shape[0], item.shape[-1]) \
            and item.shape[-1] not in (3, 4):
        item = item.reshape(item.shape[1:] if item.shape[0] == 1 else item.shape[:-1])
    try:
        return grey(item)
    except ImageError as e:
        raise ImageError(f"{where}: {e}") from None


def load_labelled_folder(folder: str | os.PathLike, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """People's own labelled digits: ``folder/<class>/<image>``, one subfolder per class named by its
    label or its index ("0".."9" for MNIST; "0".."9" or a label without "/" for Fashion-MNIST), each image
    prepared as predict prepares it. Returns (N, 28, 28) uint8 images, (N,) int64 labels and the files' names.

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
        if not any(q.suffix.lower() in IMAGE_SUFFIXES for q in sub.iterdir()):
            continue  # a class with no examples here; a tree with none at all is refused below
        for path in expand_sources([str(sub)]):
            images.append(prepare(decode(path)).image)
            labels.append(index[sub.name])
            names.append(str(path))
    if not images:
        raise ImageError(f"{root}: no images found; expected subfolders 0..{len(classes) - 1} holding image "
                         f"files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return np.stack(images), np.asarray(labels, dtype=np.int64), names
