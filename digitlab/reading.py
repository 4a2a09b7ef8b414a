"""Reading whole numbers: several digits in one picture, left to right (issue 15).

The same road as one digit (digitlab.prepare): the picture's ink map (ink_map), its marks (find_marks:
pieces stacked over one another are one mark, so a 5's detached bar or a broken 4 stays whole; specks are
dropped), and each digit's ink through MNIST's own recipe (to_28x28) before the model. What is new here:

- Short marks: find_marks() keeps marks at least half the tallest one's height (right for one digit);
  a line of digits also holds flat ones (a low 2 beside a tall 7), so pieces left out that are 40% of
  the line's median digit height are read as digits too.
- Touching digits: a mark wider than SPLIT_ASPECT line heights, or WIDE_MARK times the line's median
  mark, or read below the model's calibrated threshold, is over-cut at the minima of its column
  projection; its reading is the chain of pieces (the whole mark among them) with the largest sum of
  log-probability of each piece's digit plus the log-likelihood of the piece's shape for that digit
  (ASPECT_LOG_NORMAL, from MNIST), less SPLIT_PENALTY per digit: a small dynamic programme over the
  alternatives, chosen by the classifier, not a fixed width rule.
- Separators: a small round mark low in the line is a decimal point or comma, reported as "."; a flat
  mark across the middle is a dash, reported as "-". They appear in `text` only, never in `digits`.
  A slash is as tall as a digit and is read as one (usually "1").
- Bounds: at most MAX_MARKS marks are read (the first, left to right); a picture with more (a page of
  text) is read in part with status "too_many_marks".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from digitlab.images import grey
from digitlab.prepare import check_2d, find_marks, ink_map, is_mnist_like, to_28x28
from digitlab.trust import DEFAULT_CALIBRATION, calibration_of

MAX_MARKS = 32  # marks read in one picture; more is a page of text, read in part ("too_many_marks")
READ_SIDE = 256  # the first working long side for a number (a line of ~6 digits gets ~30 px each)
DIGIT_PX = 32  # working height wanted for a digit: to_28x28 fits the ink to 20 px, so a little more
MAX_WORK_SIDE = 4096  # the working scale never exceeds this long side (memory: a float32 map of ~32 MB at most)
SPLIT_ASPECT = 1.3  # a mark wider than this many heights (MNIST's 99th percentile: 1.43) is cut and searched,
# and so is any mark the model reads below its calibrated threshold
WIDE_MARK = 1.5  # ... and so is a mark this many times wider than the line's median mark
SHORT_DIGIT = 0.4  # a piece this many times the line's median digit height is a digit, not a separator
MAX_PIECE_WIDTH = 1.2  # a piece of a cut mark is at most this many heights wide
MAX_CUTS_PER_HEIGHT = 3  # candidate cuts per height of a mark's width (bounds the search)
SPLIT_PENALTY = 0.5  # log-probability each digit costs (0, 0.5, 1, 2 tried on benchmarks/read_numbers.py)
# The log of each MNIST digit's ink width / height: mean and standard deviation per class 0..9, measured on
# the 60,000 training images (ink > 25 of 255).
ASPECT_LOG_NORMAL = [(-0.10, 0.18), (-0.88, 0.44), (-0.06, 0.20), (-0.21, 0.20), (-0.22, 0.20), (-0.07, 0.24),
                     (-0.30, 0.21), (-0.24, 0.20), (-0.26, 0.21), (-0.37, 0.20)]

Box = tuple[int, int, int, int]


def read(model: Any, picture: Any, source: str = "picture") -> dict[str, Any]:
    """Read the number in one decoded picture.

    model: a DigitModel (digitlab.load). picture: a PIL image or a NumPy array (H, W) grey or (H, W, 3|4)
    RGB(A), uint8 0..255 or float 0..1, any polarity. Returns {"source", "status", "text", "digits"}:
    status "ok" | "empty" | "unsure" (a digit's probability below the model's calibrated MSP threshold;
    text is still the best reading) | "too_many_marks" (more than MAX_MARKS marks: the first MAX_MARKS,
    left to right, are read); text: the digits' labels and separators ("." and "-"), left to right;
    digits: [{"digit": int, "confidence": float 0..1, "box": [x0, y0, x1, y1]}], the box in the original
    picture's pixels (x1, y1 exclusive). Raises ImageError for a picture that is not 2-D or not finite."""
    g = grey(picture)
    check_2d(g, source)
    h, w = g.shape
    if g.shape == (28, 28):
        for candidate in (g, 1.0 - g):
            if is_mnist_like(candidate):  # MNIST's own images: read as they are, as predict reads them
                return _record(model, source, "ok", *_read_mnist(model, candidate), [])
    ink, scale = _ink_at_digit_scale(g)
    marks = find_marks(ink, ink > 0)
    if marks:
        marks = sorted(marks + _short_digits(ink, marks), key=lambda m: _union(m)[0])
    status = "ok" if marks else "empty"
    if len(marks) > MAX_MARKS:
        status, marks = "too_many_marks", marks[:MAX_MARKS]
    digits, boxes = _read_marks(model, ink, marks) if marks else ([], [])
    boxes = [_original_box(b, scale, w, h) for b in boxes]
    separators = [(s, _original_box(b, scale, w, h)) for s, b in _separators(ink, marks)]
    return _record(model, source, status, digits, boxes, separators)


def _record(model: Any, source: str, status: str, digits: list[tuple[int, float]], boxes: list[list[int]],
            separators: list[tuple[str, list[int]]]) -> dict[str, Any]:
    """The reading's record: digits and separators in text left to right; "unsure" below the threshold."""
    items = sorted([(b[0], model.classes[k]) for (k, _), b in zip(digits, boxes, strict=True)]
                   + [(b[0], s) for s, b in separators])
    if status == "ok" and any(p < _msp_threshold(model) for _, p in digits):
        status = "unsure"
    return {"source": source, "status": status, "text": "".join(t for _, t in items),
            "digits": [{"digit": k, "confidence": p, "box": b} for (k, p), b in zip(digits, boxes, strict=True)]}


def _msp_threshold(model: Any) -> float:
    """The model's calibrated threshold on the maximum softmax probability (MSP). A model calibrated on
    energy has no MSP threshold: the default one (digitlab.trust.DEFAULT_CALIBRATION) is used."""
    cal = calibration_of(model)
    return float(cal["threshold"] if cal["method"] == "msp" else DEFAULT_CALIBRATION["threshold"])


def _read_mnist(model: Any, g: np.ndarray) -> tuple[list[tuple[int, float]], list[list[int]]]:
    """An MNIST-like (28, 28) picture (ink bright, 0..1): one digit, its box the ink's bounding box."""
    q = model.predict(np.clip(g * 255.0, 0, 255).round().astype(np.uint8)[None])[0]
    rows, cols = np.flatnonzero(g.max(axis=1) > 0), np.flatnonzero(g.max(axis=0) > 0)
    box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    return [(int(q.argmax()), float(q.max()))], [box]


def _ink_at_digit_scale(g: np.ndarray) -> tuple[np.ndarray, float]:
    """ink_map at a working scale where the digits are about DIGIT_PX tall: first at a long side of
    READ_SIDE (prepare()'s WORK_SIDE is for one digit: a wide number would get too few pixels per digit),
    and a picture whose digits are still under DIGIT_PX there is mapped again, less shrunk."""
    ink, scale = ink_map(g, work_side=READ_SIDE)
    marks = find_marks(ink, ink > 0)
    if not marks or scale <= 1:
        return ink, scale
    height = float(np.median([_union(m)[3] - _union(m)[1] for m in marks]))
    if height >= DIGIT_PX:
        return ink, scale
    side = min(max(g.shape), MAX_WORK_SIDE, math.ceil(max(ink.shape) * DIGIT_PX / max(height, 1.0)))
    return ink_map(g, work_side=side) if side > max(ink.shape) else (ink, scale)


def _union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _original_box(box: Box, scale: float, w: int, h: int) -> list[int]:
    """A working-scale box [x0, y0, x1, y1] in the original picture's pixels (w x h), outward, clipped."""
    x0, y0, x1, y1 = box
    return [max(0, int(x0 * scale)), max(0, int(y0 * scale)), min(w, math.ceil(x1 * scale)),
            min(h, math.ceil(y1 * scale))]


def _mark_ink(ink: np.ndarray, mark: list[Box]) -> tuple[np.ndarray, Box]:
    """The ink of one mark's pieces (other ink in its box dropped), cropped to the mark, and its box."""
    box = _union(mark)
    region = ink[box[1]:box[3], box[0]:box[2]]
    keep = np.zeros(region.shape, bool)
    for x0, y0, x1, y1 in mark:
        keep[y0 - box[1]:y1 - box[1], x0 - box[0]:x1 - box[0]] = True
    return np.where(keep, region, 0), box


def _read_marks(model: Any, ink: np.ndarray, marks: list[list[Box]]) -> tuple[list[tuple[int, float]], list[Box]]:
    """The digits in the marks, left to right: (digit, probability) and each digit's working-scale box.
    Every mark is read whole first; one in doubt (wider than a digit, or read below the calibrated
    threshold) is over-cut at its candidate cuts, and its reading is the chain of pieces (the whole mark
    among them) with the best _piece_score sum, less SPLIT_PENALTY per digit. The pieces of all the
    marks in doubt go to the model in one batch."""
    crops = [_mark_ink(ink, m) for m in marks]
    wide = WIDE_MARK * float(np.median([c.shape[1] for c, _ in crops]))
    line = float(np.median([c.shape[0] for c, _ in crops]))  # the line's digit height
    wholes = model.predict(np.stack([to_28x28(c) for c, _ in crops]))
    threshold = _msp_threshold(model)
    segments = {}  # per mark in doubt: its boundaries and the allowed pieces (i, j) between boundaries i < j
    for m, ((crop, _), q) in enumerate(zip(crops, wholes, strict=True)):
        h, w = max(crop.shape[0], line), crop.shape[1]  # a short mark (a flat 2) is measured by the line
        if w > SPLIT_ASPECT * h or w > wide or float(q.max()) < threshold:
            edges = [0, *_candidate_cuts(crop), w]
            segments[m] = (edges, [(i, j) for i in range(len(edges)) for j in range(i + 1, len(edges))
                                   if edges[j] - edges[i] <= MAX_PIECE_WIDTH * h and (i, j) != (0, len(edges) - 1)])
    images, where = [], {}
    for m, (edges, pairs) in segments.items():
        (crop, box), n = crops[m], len(edges) - 1
        where[(m, 0, n)] = (wholes[m], box, crop.shape[1] / crop.shape[0])  # the whole mark, read above
        for i, j in pairs:
            image, (x0, y0, x1, y1) = _piece(crop[:, edges[i]:edges[j]], box, edges[i])
            if image is not None:
                where[(m, i, j)] = (len(images), (x0, y0, x1, y1), (x1 - x0) / (y1 - y0))
                images.append(image)
    probs = model.predict(np.stack(images)) if images else np.zeros((0, len(model.classes)), np.float32)
    found = {k: (v[0] if isinstance(v[0], np.ndarray) else probs[v[0]], v[1], v[2]) for k, v in where.items()}
    digits, boxes = [], []
    for m, (_, box) in enumerate(crops):
        if m not in segments:
            chain = [(wholes[m], box)]
        else:
            edges, pairs = segments[m]
            allowed = [(i, j) for i, j in [*pairs, (0, len(edges) - 1)] if (m, i, j) in found]
            best = _best_chain(len(edges), allowed, lambda i, j, m=m: _piece_score(found[(m, i, j)][0],
                                                                                  found[(m, i, j)][2]))
            chain = [found[(m, i, j)][:2] for i, j in best]
        for q, b in chain:
            digits.append((int(q.argmax()), float(q.max())))
            boxes.append(b)
    return digits, boxes


def _piece_score(q: np.ndarray, aspect: float) -> float:
    """How well a piece reads as one digit: the log-probability of its digit (q: the model's (C,)
    probabilities over MNIST's classes) plus the log-likelihood of its shape (width / height of its ink)
    for that digit, under ASPECT_LOG_NORMAL; shapes no digit has (two digits read as one, a third of a
    0 read as a 1) cost what they are unlikely."""
    k = int(q.argmax())
    mu, sd = ASPECT_LOG_NORMAL[k] if len(q) == len(ASPECT_LOG_NORMAL) else (-0.2, 0.3)
    z = (math.log(max(aspect, 1e-3)) - mu) / sd
    return math.log(max(float(q[k]), 1e-9)) - 0.5 * z * z


def _best_chain(n: int, pairs: list[tuple[int, int]], score: Any) -> list[tuple[int, int]]:
    """The chain of pieces (i, j) from boundary 0 to n - 1 with the largest total score(i, j) minus
    SPLIT_PENALTY per piece; pieces without ink may be skipped over (they hold nothing to read)."""
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {0: (0.0, [])}
    ends = {j for _, j in pairs}
    for j in range(1, n):
        options = [(best[i][0] + score(i, j) - SPLIT_PENALTY, best[i][1] + [(i, j)])
                   for i, jj in pairs if jj == j and i in best]
        if j not in ends and j - 1 in best:  # a boundary no piece ends at: carry the chain through the gap
            options.append(best[j - 1])
        if options:
            best[j] = max(options, key=lambda t: t[0])
    return best.get(n - 1, (0.0, []))[1]


def _candidate_cuts(crop: np.ndarray) -> list[int]:
    """Columns where a mark (ink crop, float 0..1, (h, w)) may be cut into digits: the local minima of
    its column projection, deepest first, each at least a tenth of the height from the others and the
    ends, at most MAX_CUTS_PER_HEIGHT per height of width."""
    h, w = crop.shape
    profile = np.convolve(crop.sum(axis=0), np.ones(3) / 3, mode="same")
    margin = max(2, int(0.1 * h))
    minima = [x for x in range(margin, w - margin)
              if profile[x] <= profile[x - 1] and profile[x] <= profile[x + 1]]
    most = max(1, math.ceil(MAX_CUTS_PER_HEIGHT * w / h))
    chosen: list[int] = []
    for x in sorted(minima, key=lambda x: profile[x]):
        if all(abs(x - c) >= margin for c in chosen):
            chosen.append(x)
        if len(chosen) == most:
            break
    return sorted(chosen)


def _piece(crop: np.ndarray, box: Box, offset: int) -> tuple[np.ndarray | None, Box]:
    """A piece of a mark (ink columns, float 0..1) trimmed to its ink and made 28x28 (None without ink),
    with its working-scale box (the mark's box shifted by the piece's column offset)."""
    rows, cols = np.flatnonzero(crop.max(axis=1) > 0), np.flatnonzero(crop.max(axis=0) > 0)
    if not len(rows) or float(crop.sum()) < 0.02 * crop.shape[0] ** 2:
        return None, box
    trimmed = crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    x0 = box[0] + offset
    return to_28x28(trimmed), (x0 + int(cols[0]), box[1] + int(rows[0]), x0 + int(cols[-1]) + 1,
                               box[1] + int(rows[-1]) + 1)


def _leftovers(ink: np.ndarray, marks: list[list[Box]]) -> list[tuple[Box, int]]:
    """The pieces of ink (box, ink pixels) outside every mark, left to right."""
    import cv2

    unions = [_union(m) for m in marks]
    _, _, stats, _ = cv2.connectedComponentsWithStats((ink > 0).astype(np.uint8), connectivity=8)
    pieces = [((int(x), int(y), int(x + bw), int(y + bh)), int(area)) for x, y, bw, bh, area in stats[1:]]
    return sorted((b, a) for b, a in pieces if not any(_inside(b, u) for u in unions))


def _short_digits(ink: np.ndarray, marks: list[list[Box]]) -> list[list[Box]]:
    """Marks find_marks() leaves out as under half the tallest mark's height, that a line of digits holds
    (a flat 2 or a small 0 beside a tall 7): pieces outside the marks at least SHORT_DIGIT of the median
    mark's height and a tenth of its ink box's area; left to right, merged with the marks by read()."""
    unions = [_union(m) for m in marks]
    height = float(np.median([u[3] - u[1] for u in unions]))
    area = float(np.median([(u[2] - u[0]) * (u[3] - u[1]) for u in unions]))
    return [[b] for b, a in _leftovers(ink, marks)
            if b[3] - b[1] >= SHORT_DIGIT * height and (b[2] - b[0]) * (b[3] - b[1]) >= 0.1 * area
            and a >= 0.05 * area]


def _separators(ink: np.ndarray, marks: list[list[Box]]) -> list[tuple[str, Box]]:
    """Decimal points or commas (".") and dashes ("-") in the line of marks, with their working boxes:
    pieces of ink outside every mark, sized and placed relative to the digits' line (top, height)."""
    if not marks:
        return []
    unions = [_union(m) for m in marks]
    top = float(np.median([u[1] for u in unions]))
    height = float(np.median([u[3] - u[1] for u in unions]))
    found = []
    for (x0, y0, x1, y1), area in _leftovers(ink, marks):
        bw, bh = x1 - x0, y1 - y0
        if max(bw, bh) < max(2, 0.06 * height):
            continue
        cy = (y0 + bh / 2 - top) / height  # 0 at the digits' top, 1 at their foot
        apart = all(x1 <= u[0] or x0 >= u[2] for u in unions)  # beside the digits, not a crumb of one
        if apart and 0.1 * height <= max(bw, bh) and bw <= 0.35 * height and bh <= 0.45 * height and cy > 0.65 \
                and area >= 0.3 * bw * bh:
            found.append((".", (x0, y0, x1, y1)))
        elif 0.2 * height <= bw <= 1.2 * height and bh <= 0.3 * height and bw >= 2 * bh and 0.25 < cy < 0.75:
            found.append(("-", (x0, y0, x1, y1)))
    return found


def _inside(box: Box, mark: Box) -> bool:
    """Whether half or more of box lies within mark."""
    ix = max(0, min(box[2], mark[2]) - max(box[0], mark[0]))
    iy = max(0, min(box[3], mark[3]) - max(box[1], mark[1]))
    return ix * iy >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])


def file_size(source: Any) -> tuple[int, int] | None:
    """The (width, height) an image file (path or bytes) declares, as shown (EXIF rotation applied), or
    None if its header is unreadable. load_image() decodes big files reduced: read() boxes are mapped
    back to these pixels with rescale_boxes()."""
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientations that swap the sides
                return (im.height, im.width) if turned else (im.width, im.height)
    except Exception:  # noqa: BLE001 - the decoder reports an unreadable file properly
        return None


def rescale_boxes(record: dict[str, Any], decoded: tuple[int, int], original: tuple[int, int]) -> dict[str, Any]:
    """record (from read) with its digits' boxes mapped from the decoded picture's pixels (width, height)
    to the original's, outward; unchanged when the sizes agree."""
    if decoded == original:
        return record
    fx, fy = original[0] / decoded[0], original[1] / decoded[1]
    for d in record["digits"]:
        x0, y0, x1, y1 = d["box"]
        d["box"] = [int(x0 * fx), int(y0 * fy), min(original[0], math.ceil(x1 * fx)),
                    min(original[1], math.ceil(y1 * fy))]
    return record


def read_file(model: Any, path: Any, source: str | None = None) -> dict[str, Any]:
    """read() of an image file (path or bytes), decoded as `digitlab predict` decodes it, with the boxes
    in the file's own pixels. Raises ImageError naming the file for anything unreadable."""
    from digitlab.images import decode

    name = source or str(path)
    picture = decode(path, name=name)
    record = read(model, picture, name)
    size = file_size(path)
    return record if size is None else rescale_boxes(record, (picture.shape[1], picture.shape[0]), size)
