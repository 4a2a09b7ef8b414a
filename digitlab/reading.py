"""Reading whole numbers: several digits in one picture, left to right (issue 15).

The same road as one digit (digitlab.prepare): the picture's ink map (ink_map), its marks (find_marks:
pieces stacked over one another are one mark, so a 5's detached bar or a broken 4 stays whole; specks are
dropped), and each digit's ink through MNIST's own recipe (to_28x28) before the model. What is new here:

- Short marks: find_marks() keeps marks at least half the tallest one's height (right for one digit);
  a line of digits also holds flat ones (a low 2 beside a tall 7), so pieces left out that are 40% of
  the line's median digit height are read as digits too.
- Touching digits: a mark in doubt (wider than DOUBT_ASPECT line heights, read below DOUBT_PROBABILITY,
  or shaped unlike its digit) is over-cut along minimum-cost paths from its top to its bottom through
  the least ink (_cut_paths), which follow the writing's slant and the valley between two digits whose
  ink overlaps in columns, where no straight vertical cut exists; and along straight lines at a few
  slants through the least ink (_straight_cuts: where one digit leans into another's curve or their
  strokes cross, the cheapest path bends round ink that the cut between them goes through). Its reading
  is the chain of pieces (the whole mark among them) with the largest sum of each piece's score, less
  SPLIT_PENALTY per digit: a small dynamic programme over the alternatives, chosen by the classifier, not
  a fixed width rule.
  A piece's score (_piece_score): the log-probability of its digit, and the log-likelihoods of its
  shape for that digit (ASPECT_LOG_NORMAL, from MNIST), of its height against the line's, and of its
  energy (the log-sum-exp of the logits) against the line's reference: the softmax is sure of a
  fragment of a digit or of two digits read as one, but its logits are smaller there.
- The piece verifier (digitlab.pieces, optional): a small CNN trained on pieces cut this way from
  synthetic numbers of MNIST training digits, labelled one whole digit ("0".."9"), "part" or "more". With
  one, a piece's score adds VERIFIER_WEIGHT times the log of its verdict that the piece is its digit, whole;
  its digit probabilities join the classifier's in naming the piece (_digit); and a mark it does not read
  as one whole digit is in doubt. Touching digits read right went from 65% to 85% on the benchmark.
- Separators: a small round mark low in the line is a decimal point or comma, reported as "."; a flat
  mark across the middle is a dash, reported as "-". They appear in `text` only, never in `digits`.
  A slash is as tall as a digit and is read as one (usually "1").
- Bounds: at most MAX_MARKS marks are read (the first, left to right); a picture with more (a page of
  text) is read in part with status "too_many_marks".
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from digitlab.images import grey
from digitlab.prepare import MARK_GAP, check_2d, find_marks, ink_map, ink_polarity, is_mnist_like, to_28x28
from digitlab.trust import DEFAULT_CALIBRATION, calibration_of, energy_score

MAX_MARKS = 32  # marks read in one picture; more is a page of text, read in part ("too_many_marks")
READ_SIDE = 256  # the first working long side for a number (a line of ~6 digits gets ~30 px each)
DIGIT_PX = 32  # working height wanted for a digit: to_28x28 fits the ink to 20 px, so a little more
MAX_WORK_SIDE = 4096  # the working scale never exceeds this long side (memory: a float32 map of ~32 MB at most)
DOUBT_ASPECT = 0.9  # a mark read whole is cut and searched when wider than this many line heights, ...
DOUBT_PROBABILITY = 0.95  # ... or read below this probability, ...
DOUBT_Z = 2.0  # ... or its width / height is this many standard deviations from its digit's (ASPECT_LOG_NORMAL)
LINE_SHARE = 0.5  # a band of rows holding ink is a line of digits when at least this share of the tallest, ...
LINE_GAP = 0.3  # ... and this share of its height (or its neighbour's) clear of the next line
SHORT_DIGIT = 0.4  # a piece this many times the line's median digit height is a digit, not a separator
MAX_PIECE_WIDTH = 1.2  # a piece of a cut mark is at most this many heights wide
MAX_CUTS_PER_HEIGHT = 3  # candidate cut paths per height of a mark's width (bounds the search)
CUT_FLOOR = 0.05  # what a paper pixel costs a cut path (ink: up to 1 more): among inkless paths, the straightest
CUT_STEP = 0.5  # what a cut path's sideways step costs: a slant of 0.15 over a 32 px digit is ~5 steps
CUT_POOL_FROM = 32  # marks at least this many px tall have their cut paths found on pairs of rows (half the work)
CUT_SLANTS = (-0.3, -0.15, 0.0, 0.15, 0.3)  # straight cuts at these slants (columns per row) too, ...
CUT_STRAIGHT = 2  # ... at most this many per height of a mark's width (beside MAX_CUTS_PER_HEIGHT cheapest paths)
CUT_ROWS = (0.25, 0.5, 0.75)  # cut paths go through the minima of the cheapest paths' cost along these rows (of h)
CUT_SAME = 0.1  # cut paths with less than this share of a digit's ink between them are one cut
CUT_INK = 0.5  # what a cut costs per stroke of ink it crosses, ...
STROKE = 0.11  # ... a stroke being this many digit heights wide (MNIST: ~2.2 px of 20)
FIRST_PENALTY = 0.5  # log-probability each digit costs in the first pass (no energy term: the classifier is sure
# of fragments and of two digits read as one, so more digits must pay)
SPLIT_PENALTY = -2.0  # ... and in the second, with the energy term: a bonus (too few digits was the rarer right answer)
HEIGHT_SD = 0.15  # a piece shorter than the line costs (log(height / line) / HEIGHT_SD)^2 / 2
ENERGY_SLACK = 3.0  # a piece's energy may fall this far under the line's reference before it costs ...
ENERGY_SD = 1.0  # ... ((energy - reference + ENERGY_SLACK) / ENERGY_SD)^2 / 2
VERIFIER_WEIGHT = 2.0  # with a piece verifier: the weight of the log of its verdict that the piece is its digit, whole
VERIFIER_READ = 1.0  # the weight of the verifier's digit beside the classifier's in the piece's reading (_digit)
VERIFIER_DOUBT = 0.5  # a mark the verifier reads as one whole digit below this is in doubt
# The DOUBT_, CUT_ and the five constants above tuned on strings of MNIST *training* digits 50,000-59,999 drawn
# as benchmarks/read_numbers.py draws its test digits (never on the benchmark's strings), with a `fast` model;
# the VERIFIER_ ones likewise (seed 123), with the verifier `python -m digitlab.pieces` trains by default.
# CUT_SLANTS and CUT_STRAIGHT likewise (seed 123, 300 touching strings), with the `best` model (best-oe) and
# its verifier: wider slants (+-0.45) or more cuts of either kind read no better or cost too much time.
# The log of each MNIST digit's ink width / height: mean and standard deviation per class 0..9, measured on
# the 60,000 training images (ink > 25 of 255).
ASPECT_LOG_NORMAL = [(-0.10, 0.18), (-0.88, 0.44), (-0.06, 0.20), (-0.21, 0.20), (-0.22, 0.20), (-0.07, 0.24),
                     (-0.30, 0.21), (-0.24, 0.20), (-0.26, 0.21), (-0.37, 0.20)]

Box = tuple[int, int, int, int]


def read(model: Any, picture: Any, source: str = "picture", pieces: Any = None) -> dict[str, Any]:
    """Read the number in one decoded picture.

    model: a DigitModel (digitlab.load). picture: a PIL image or a NumPy array (H, W) grey or (H, W, 3|4)
    RGB(A), uint8 0..255 or float 0..1, any polarity. Returns {"source", "status", "text", "digits"}:
    status "ok" | "empty" | "unsure" (a digit's probability below the model's calibrated MSP threshold;
    text is still the best reading) | "several_lines" (digits in more than one line, _several_lines: none
    read, text "") | "too_many_marks" (more than MAX_MARKS marks: the first MAX_MARKS,
    left to right, are read); text: the digits' labels and separators ("." and "-"), left to right;
    digits: [{"digit": int, "confidence": float 0..1, "box": [x0, y0, x1, y1]}], the box in the original
    picture's pixels (x1, y1 exclusive). pieces: a piece verifier (digitlab.pieces.load_verifier) or None;
    with one, each piece's score also holds its verdict that the piece is one whole digit (VERIFIER_WEIGHT).
    Raises ImageError for a picture that is not 2-D or not finite."""
    g = grey(picture)
    check_2d(g, source)
    h, w = g.shape
    if g.shape == (28, 28):
        for candidate in (g, 1.0 - g):
            if is_mnist_like(candidate):  # MNIST's own images: read as they are, as predict reads them
                return _record(model, source, "ok", *_read_mnist(model, candidate), [])
    ink, scale, stroke = _ink_at_digit_scale(g)
    marks = find_marks(ink, ink > 0, stroke=stroke, stack_gap=MARK_GAP)
    if marks:
        marks = sorted(marks + _short_digits(ink, marks), key=lambda m: _union(m)[0])
    status = "ok" if marks else "empty"
    if _several_lines(marks):  # read left to right, the lines' digits would interleave (or stack into "1"s)
        return _record(model, source, "several_lines", [], [], [])
    if len(marks) > MAX_MARKS:
        status, marks = "too_many_marks", marks[:MAX_MARKS]
    digits, boxes = _read_marks(model, ink, marks, pieces, scale) if marks else ([], [])
    boxes = [_original_box(b, scale, w, h) for b in boxes]
    left = _leftovers(ink, marks) if marks else []  # (once: the separators and the unread ink are among them)
    found = _separators(left, marks)
    if status == "ok" and _unread_ink(left, marks, [b for _, b in found]):
        status = "unsure"  # the text is the best reading of the digits found, but ink was left out of it
    separators = [(s, _original_box(b, scale, w, h)) for s, b in found]
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


def _ink_at_digit_scale(g: np.ndarray) -> tuple[np.ndarray, float, float]:
    """ink_map at a working scale where the digits are about DIGIT_PX tall: first at a long side of
    READ_SIDE (prepare()'s WORK_SIDE is for one digit: a wide number would get too few pixels per digit),
    and a picture whose digits are still under DIGIT_PX there is mapped again, less shrunk. A number
    small on a big page (under ~1/20 of its side) fades out at READ_SIDE: with nothing found, the picture
    is mapped again 4x finer, up to MAX_WORK_SIDE. Returns (ink, scale, stroke): find_marks' stroke bound
    for that map (kept the same size on the picture as at READ_SIDE when the map was made finer)."""
    ink, scale = ink_map(g, work_side=READ_SIDE)
    marks, stroke = find_marks(ink, ink > 0, stack_gap=MARK_GAP), 0.05
    bright = None  # a finer map keeps READ_SIDE's judgement of the ink's polarity (judged when first needed)
    side = READ_SIDE
    while not marks and scale > 1 and side < min(max(g.shape), MAX_WORK_SIDE):
        side = min(side * 4, max(g.shape), MAX_WORK_SIDE)
        bright = ink_polarity(g, READ_SIDE) if bright is None else bright
        ink, scale = ink_map(g, work_side=side, bright=bright)
        stroke = 0.05 * READ_SIDE / max(ink.shape)
        marks = find_marks(ink, ink > 0, stroke=stroke, stack_gap=MARK_GAP)
    if not marks or scale <= 1:
        return ink, scale, stroke
    height = float(np.median([_union(m)[3] - _union(m)[1] for m in marks]))
    if height >= DIGIT_PX:
        return ink, scale, stroke
    side = min(max(g.shape), MAX_WORK_SIDE, math.ceil(max(ink.shape) * DIGIT_PX / max(height, 1.0)))
    if side <= max(ink.shape):
        return ink, scale, stroke
    bright = ink_polarity(g, READ_SIDE) if bright is None else bright
    finer, finer_scale = ink_map(g, work_side=side, bright=bright)
    return finer, finer_scale, stroke * max(ink.shape) / max(finer.shape)  # the bound: the same size on the picture


def _several_lines(marks: list[list[Box]]) -> bool:
    """Whether the marks' pieces lie in more than one line: their rows, merged where they overlap, form two
    bands each at least LINE_SHARE of the tallest band's height, LINE_GAP of the shorter one apart. A 5's
    bar, an underline or a decimal point are too flat to count as a line; the halves of a broken 8 too close."""
    spans = sorted((b[1], b[3]) for m in marks for b in m)
    bands: list[list[int]] = []
    for y0, y1 in spans:
        if bands and y0 <= bands[-1][1]:
            bands[-1][1] = max(bands[-1][1], y1)
        else:
            bands.append([y0, y1])
    tallest = max((b[1] - b[0] for b in bands), default=0)
    lines = [b for b in bands if b[1] - b[0] >= LINE_SHARE * tallest]
    return any(b[0] - a[1] >= LINE_GAP * min(a[1] - a[0], b[1] - b[0]) for a, b in itertools.pairwise(lines))


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


def _read_marks(model: Any, ink: np.ndarray, marks: list[list[Box]], verifier: Any = None, scale: float = 1.0
                ) -> tuple[list[tuple[int, float]], list[Box]]:
    """The digits in the marks, left to right: (digit, probability) and each digit's working-scale box.
    Every mark is read whole first; one in doubt (_in_doubt) is over-cut along its candidate cut paths
    (_cut_paths), and its reading is the chain of pieces (the whole mark among them) with the best sum of
    _piece_score less SPLIT_PENALTY per digit (_best_chain). Two passes: the first, scored without the
    energy term, gives the line's reference energy (the highest of its chosen pieces: the model's own
    scale, whatever its training); the second scores each piece's energy against it. With a verifier
    (digitlab.pieces), its (12,) probabilities for each piece join the score and the doubt."""
    crops = [_mark_ink(ink, m) for m in marks]
    line = float(np.median([c.shape[0] for c, _ in crops]))  # the line's digit height
    images = [to_28x28(c, max(c.shape) * scale) for c, _ in crops]  # scale: picture px per working px
    wholes = _outputs(model, images)
    checks = _checks(verifier, images)
    sure = _sure_probability(model)
    lattices = [_lattice(crop, box, max(crop.shape[0], line), scale) if _in_doubt(q, box, line, v, sure)
                else (2, {}, [0.0, 0.0]) for (crop, box), (q, _), v in zip(crops, wholes, checks, strict=True)]
    cut = [image for _, pieces, _ in lattices for image, _ in pieces.values()]
    outputs = iter(_outputs(model, cut))
    verdicts = iter(_checks(verifier, cut))
    found = [{(0, n - 1): (*whole, box, v), **{k: (*next(outputs), b, next(verdicts)) for k, (_, b) in pieces.items()}}
             for (n, pieces, _), whole, (_, box), v in zip(lattices, wholes, crops, checks, strict=True)]
    chains = [_best_chain(n, list(f), _chain_score(f, crossed, line, None), FIRST_PENALTY)
              for (n, _, crossed), f in zip(lattices, found, strict=True)]
    ref = max(f[k][1] for f, c in zip(found, chains, strict=True) for k in c)
    digits, boxes = [], []
    for (n, _, crossed), f in zip(lattices, found, strict=True):
        for k in _best_chain(n, list(f), _chain_score(f, crossed, line, ref), SPLIT_PENALTY):
            q, _, b, v = f[k]
            d = _digit(q, v)
            digits.append((d, float(q[d])))
            boxes.append(b)
    return digits, boxes


def _chain_score(found: dict[tuple[int, int], tuple[np.ndarray, float, Box, np.ndarray | None]], crossed: list[float],
                 line: float, ref: float | None) -> Any:
    """score(i, j) for _best_chain: piece (i, j)'s _piece_score, less CUT_INK per stroke its left cut
    crosses (crossed[i]: the ink on cut path i over a stroke's width, STROKE line heights; 0 at the mark's
    edges): a boundary between touching digits crosses little ink, a cut through one digit more."""
    return lambda i, j: _piece_score(found[(i, j)], line, ref) - CUT_INK * crossed[i] / (STROKE * line)


def _checks(verifier: Any, images: list[np.ndarray]) -> list[np.ndarray | None]:
    """The verifier's (12,) probabilities (digitlab.pieces.PIECE_CLASSES) for each 28x28 image; Nones
    without a verifier."""
    if verifier is None or not images:
        return [None] * len(images)
    return list(_forward(verifier, np.stack(images))[0])


def _outputs(model: Any, images: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
    """The model's (C,) probabilities and energy (the log-sum-exp of its logits) for each 28x28 image."""
    if not images:
        return []
    probs, logits = _forward(model, np.stack(images))
    energies = energy_score(logits)
    return [(q, float(e)) for q, e in zip(probs, energies, strict=True)]


def _forward(model: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, logits) of 28x28 images to_28x28 made: straight to the network (DigitModel.forward:
    predict would check each for MNIST-likeness again, and prepare a lopsided piece a second time); a
    model without forward (a stand-in) through its predict."""
    forward = getattr(model, "forward", None)
    return forward(images) if forward is not None else model.predict(images, logits=True)


def _sure_probability(model: Any) -> float:
    """DOUBT_PROBABILITY of the most probability the model was trained to give: label smoothing eps over
    K classes trains the top class towards 1 - eps + eps / K (0.91 for `best`'s 0.1), so a sure reading
    of such a model never reaches 0.95 and every mark would be searched (2.4x the reading time)."""
    eps = float((model.metadata.get("training") or {}).get("label_smoothing") or 0.0)
    k = max(len(model.classes), 1)
    return DOUBT_PROBABILITY * (1.0 - eps + eps / k)


def _in_doubt(q: np.ndarray, box: Box, line: float, v: np.ndarray | None = None,
              sure: float = DOUBT_PROBABILITY) -> bool:
    """Whether a mark read whole (probabilities q, working box) may hold more than one digit, or less:
    wider than DOUBT_ASPECT line heights, read below sure (_sure_probability), its shape (width / height) over
    DOUBT_Z standard deviations from its digit's (ASPECT_LOG_NORMAL), or (v: the piece verifier's
    probabilities) read by the verifier as one whole digit below VERIFIER_DOUBT."""
    if v is not None and float(v[:10].sum()) < VERIFIER_DOUBT:
        return True
    k = int(q.argmax())
    mu, sd = ASPECT_LOG_NORMAL[k] if len(q) == len(ASPECT_LOG_NORMAL) else (-0.2, 0.3)
    w, h = box[2] - box[0], box[3] - box[1]
    z = (math.log(max(w / max(h, 1), 1e-3)) - mu) / sd
    return w > DOUBT_ASPECT * max(h, line) or float(q[k]) < sure or abs(z) > DOUBT_Z


def _lattice(crop: np.ndarray, box: Box, h: float, scale: float = 1.0
             ) -> tuple[int, dict[tuple[int, int], tuple[np.ndarray, Box]], list[float]]:
    """A mark over-cut: its cut paths (the mark's left and right edges among them, n in all), the pieces
    between paths i < j (not the whole mark, read already) at most MAX_PIECE_WIDTH line heights h wide
    that hold ink, each as (28x28 image, working-scale box), and the ink each path crosses (n,).
    scale: picture pixels per working pixel (to_28x28 sharpens pieces that were enlarged)."""
    rows, w = crop.shape
    paths = [np.zeros(rows, np.int64), *_cut_paths(crop, max(1, math.ceil(MAX_CUTS_PER_HEIGHT * w / h))),
             np.full(rows, w, np.int64)]
    cols = np.arange(w)
    middle = [float(p.mean()) for p in paths]
    pieces = {}
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if (i, j) == (0, len(paths) - 1) or middle[j] - middle[i] > MAX_PIECE_WIDTH * h:
                continue
            keep = (cols >= paths[i][:, None]) & (cols < paths[j][:, None])
            image, piece_box = _piece(np.where(keep, crop, 0), box, scale)
            if image is not None:
                pieces[(i, j)] = (image, piece_box)
    crossed = [float(crop[np.arange(rows), np.minimum(p, w - 1)].sum()) for p in paths]
    return len(paths), pieces, [0.0, *crossed[1:-1], 0.0]


def _piece_score(piece: tuple[np.ndarray, float, Box, np.ndarray | None], line: float,
                 ref: float | None = None) -> float:
    """How well a piece reads as one digit. piece: the model's (C,) probabilities, its energy (log-sum-exp
    of the logits) and the piece's working-scale box; line: the line's digit height in working px; ref:
    the line's reference energy (None: no energy term). The log-probability of its digit, plus the
    log-likelihoods (Gaussian, up to a constant) of its shape (width / height of its ink, for that digit:
    ASPECT_LOG_NORMAL), of its height when under the line's (log ratio, sd HEIGHT_SD: a fragment of a
    digit is short), and of its energy when more than ENERGY_SLACK under ref (sd ENERGY_SD: the model's
    logits are small on what it was not trained on, a fragment or two digits read as one, though its
    softmax may be sure of them). With the piece verifier's probabilities v (PIECE_CLASSES), VERIFIER_WEIGHT
    times the log of its probability that the piece is one whole digit, the classifier's."""
    q, energy, (x0, y0, x1, y1), v = piece
    k = _digit(q, v)
    mu, sd = ASPECT_LOG_NORMAL[k] if len(q) == len(ASPECT_LOG_NORMAL) else (-0.2, 0.3)
    z = (math.log(max((x1 - x0) / max(y1 - y0, 1), 1e-3)) - mu) / sd
    zh = min(math.log(max(y1 - y0, 1) / line), 0.0) / HEIGHT_SD
    ze = 0.0 if ref is None else min(energy - ref + ENERGY_SLACK, 0.0) / ENERGY_SD
    score = math.log(max(float(q[k]), 1e-9)) - 0.5 * (z * z + zh * zh + ze * ze)
    return score if v is None else score + VERIFIER_WEIGHT * math.log(max(float(v[k]), 1e-9))


def _digit(q: np.ndarray, v: np.ndarray | None) -> int:
    """A piece's digit: the classifier's (probabilities q), or with the verifier's (v) the largest product
    q * v ** VERIFIER_READ over the digits (its verdicts on whole digits, weighted)."""
    if v is None or VERIFIER_READ == 0 or len(q) != 10:
        return int(q.argmax())
    return int(np.argmax(np.log(np.maximum(q, 1e-9)) + VERIFIER_READ * np.log(np.maximum(v[:10], 1e-9))))


def _best_chain(n: int, pairs: list[tuple[int, int]], score: Any, penalty: float) -> list[tuple[int, int]]:
    """The chain of pieces (i, j) from boundary 0 to n - 1 with the largest total score(i, j) minus
    penalty per piece; pieces without ink may be skipped over (they hold nothing to read)."""
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {0: (0.0, [])}
    ends = {j for _, j in pairs}
    for j in range(1, n):
        options = [(best[i][0] + score(i, j) - penalty, best[i][1] + [(i, j)])
                   for i, jj in pairs if jj == j and i in best]
        if j not in ends and j - 1 in best:  # a boundary no piece ends at: carry the chain through the gap
            options.append(best[j - 1])
        if options:
            best[j] = max(options, key=lambda t: t[0])
    return best.get(n - 1, (0.0, []))[1]


def _cut_paths(crop: np.ndarray, most: int) -> list[np.ndarray]:
    """Where a mark (ink crop, float 0..1, (h, w)) may be cut into digits: paths from its top row to its
    bottom row, one column per row (int64 (h,)), through the least ink, left to right. Minimum-cost paths
    (as in seam carving, or the drop-fall cuts of digit-string readers) over the ink, each pixel costing
    its ink plus CUT_FLOOR and each sideways step CUT_STEP (on rows taken in pairs for a mark CUT_POOL_FROM
    px tall or more), so a cut follows the slant of the writing and the valley between two digits whose
    ink overlaps in columns, where a straight cut would cross both. The candidates are the cheapest whole
    paths through the minima of that cost along the rows CUT_ROWS, cheapest first, at most `most`; and
    straight cuts at the slants CUT_SLANTS (_straight_cuts), at most CUT_STRAIGHT for every
    MAX_CUTS_PER_HEIGHT of `most`; of two with little ink between them only the first (_distinct_cuts)."""
    h, w = crop.shape
    f = 2 if h >= CUT_POOL_FROM else 1  # rows taken in pairs: a sideways step per pair, a slant up to 1 in 2
    pooled = np.pad(crop, ((0, -h % f), (0, 0))).reshape(-(-h // f), f, w).sum(axis=1)
    cost = (pooled + f * CUT_FLOOR).astype(np.float32)
    down, up = _path_costs(cost), _path_costs(cost[::-1])
    through = down + up[::-1] - cost  # the cheapest whole path through each pixel
    starts = []
    for y in sorted({int(r * len(cost)) for r in CUT_ROWS}):
        t = through[y]
        xs = 1 + np.flatnonzero((t[1:-1] <= t[:-2]) & (t[1:-1] < t[2:]))  # the row's minima
        starts += [(float(t[x]), y, int(x)) for x in xs]
    paths = np.zeros((0, h), np.int64)
    if starts:
        starts.sort()
        y0s, xs = np.array([y for _, y, _ in starts]), np.array([x for _, _, x in starts])
        walled = [np.pad(t, ((0, 0), (1, 1)), constant_values=np.inf) for t in (down, up)]
        paths = _trace(walled[0], y0s, xs)  # up from each start row, on the costs from the top ...
        paths[:, ::-1] = np.maximum(paths[:, ::-1], _trace(walled[1], len(cost) - 1 - y0s, xs))  # ... and down
        paths = np.repeat(paths, f, axis=1)[:, :h]
    straight = math.ceil(most * CUT_STRAIGHT / MAX_CUTS_PER_HEIGHT)  # the same bound per height of the mark's width
    return _distinct_cuts(crop, [(paths, most), (_straight_cuts(crop), straight)])


def _straight_cuts(crop: np.ndarray) -> np.ndarray:
    """Straight cuts of a mark (ink crop, float 0..1, (h, w)) at each slant of CUT_SLANTS (columns per row),
    at the minima of the ink along lines of that slant, least ink first: int64 (k, h), a column per row.
    A cheapest path (_cut_paths) bends round ink it could cross; where two digits' strokes cross or
    one digit leans into the other's curve, the cut between them is a straight line through a stroke or
    two, which no cheapest path takes."""
    import cv2

    h, w = crop.shape
    rows = np.arange(h)
    found = []
    for slant in CUT_SLANTS:
        shift = np.round(slant * (rows - (h - 1) / 2)).astype(np.int64)  # each row's offset from the middle row
        pad = int(np.abs(shift).max())
        # the mark sheared so that lines of this slant are columns (nearest pixel: the columns the path takes)
        sheared = cv2.warpAffine(crop, np.float32([[1, -slant, slant * (h - 1) / 2 + pad], [0, 1, 0]]),
                                 (w + 2 * pad, h), flags=cv2.INTER_NEAREST)
        ink = np.convolve(sheared.sum(axis=0), np.ones(3) / 3, mode="same")  # a crossing of a stroke, not a pixel
        xs = 1 + np.flatnonzero((ink[1:-1] <= ink[:-2]) & (ink[1:-1] < ink[2:]))
        found += [(float(ink[x]), np.clip(x - pad + shift, 0, w)) for x in xs]
    found.sort(key=lambda t: t[0])
    return np.array([c for _, c in found], np.int64).reshape(-1, h)


def _distinct_cuts(crop: np.ndarray, pools: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
    """The cuts of a mark (ink crop (h, w)) taken from pools of candidates ((paths int64 (k, h), best first;
    at most `most` taken), pool by pool: of paths with less ink between them than CUT_SAME of a
    digit-sized square's ink only the first is kept, and none with less than that on one side (it would
    cut off a crumb); left to right."""
    h, w = crop.shape
    rows = np.arange(h)
    ink_left = np.cumsum(np.pad(crop, ((0, 0), (1, 0))), axis=1)
    total = float(crop.sum())
    same = CUT_SAME * total * h / max(w, h)  # a share of the ink of one digit-sized square of the mark
    kept: list[tuple[np.ndarray, np.ndarray]] = []  # (ink left of the path in each row, path)
    for paths, most in pools:
        taken = 0
        for p in paths:
            if taken >= most:
                break
            left = ink_left[rows, p]
            # the ink between two cuts, not the difference of their left ink: cuts through two strokes of
            # equal ink at different places leave the same ink on their left
            if same <= left.sum() <= total - same and all(np.abs(left - a).sum() > same for a, _ in kept):
                kept.append((left, p))
                taken += 1
    return [p for _, p in sorted(kept, key=lambda t: float(t[0].sum()))]


def _path_costs(cost: np.ndarray) -> np.ndarray:
    """The cheapest path's cost from the top row to each pixel of cost (float32 (h, w)), moving down one
    row and at most one column at a time, each sideways step costing CUT_STEP: float32 (h, w)."""
    h, w = cost.shape
    total = np.empty_like(cost)
    total[0] = cost[0]
    prev = np.full(w + 2, np.inf, np.float32)  # the row above, walled at both ends
    for y in range(1, h):
        prev[1:-1] = total[y - 1]
        total[y] = np.minimum(np.minimum(prev[:-2], prev[2:]) + CUT_STEP, prev[1:-1]) + cost[y]
    return total


def _trace(walled: np.ndarray, starts: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The cheapest paths back to row 0 of a _path_costs table, given walled (with a column of inf either
    side: (h, w + 2)), from column xs[k] of row starts[k] (int64 (k,) each): int64 (k, h), each path's
    column at rows 0..starts[k], and -1 below its start row."""
    steps = np.array([CUT_STEP, 0.0, CUT_STEP], np.float32)
    out = np.full((len(xs), walled.shape[0]), -1, np.int64)
    out[np.arange(len(xs)), starts] = xs
    for r in range(int(starts.max()), 0, -1):
        on = np.flatnonzero(starts >= r)  # the paths that have reached row r
        ahead = walled[r - 1][out[on, r, None] + np.arange(3)] + steps  # the columns x - 1, x, x + 1 above
        out[on, r - 1] = out[on, r] + ahead.argmin(axis=1) - 1
    return out


def _piece(crop: np.ndarray, box: Box, scale: float = 1.0) -> tuple[np.ndarray | None, Box]:
    """A piece of a mark (the mark's crop with the ink outside the piece zeroed, float 0..1) trimmed to its
    ink and made 28x28 (None without ink enough to read), with its working-scale box."""
    rows, cols = np.flatnonzero(crop.max(axis=1) > 0), np.flatnonzero(crop.max(axis=0) > 0)
    if not len(rows) or float(crop.sum()) < 0.02 * crop.shape[0] ** 2:
        return None, box
    trimmed = crop[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    piece_box = (box[0] + int(cols[0]), box[1] + int(rows[0]), box[0] + int(cols[-1]) + 1, box[1] + int(rows[-1]) + 1)
    return to_28x28(trimmed, max(trimmed.shape) * scale), piece_box


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
    _, _, height, area = _line(marks)
    return [[b] for b, a in _leftovers(ink, marks)
            if b[3] - b[1] >= SHORT_DIGIT * height and (b[2] - b[0]) * (b[3] - b[1]) >= 0.1 * area
            and a >= 0.05 * area]


def _line(marks: list[list[Box]]) -> tuple[float, float, float, float]:
    """The digits' line, from its marks (at least one): the medians of their tops, feet, heights and box
    areas (working px)."""
    unions = [_union(m) for m in marks]
    return (float(np.median([u[1] for u in unions])), float(np.median([u[3] for u in unions])),
            float(np.median([u[3] - u[1] for u in unions])),
            float(np.median([(u[2] - u[0]) * (u[3] - u[1]) for u in unions])))


def _unread_ink(left: list[tuple[Box, int]], marks: list[list[Box]], separators: list[Box]) -> bool:
    """Whether a piece of ink (left: _leftovers's) in the digits' line, outside the marks and separators,
    is too big to be a crumb: a quarter of the line's median digit height and a twentieth of its ink (a
    digit written much smaller than the others, a letter, a mark not read): "ok" would say the text holds
    all the line holds. (A caption above or below the line is not the number.)"""
    if not marks:
        return False
    top, foot, height, area = _line(marks)
    return any(b not in separators and b[1] < foot and b[3] > top and b[3] - b[1] >= 0.25 * height
               and a >= 0.05 * area for b, a in left)


def _separators(left: list[tuple[Box, int]], marks: list[list[Box]]) -> list[tuple[str, Box]]:
    """Decimal points or commas (".") and dashes ("-") in the line of marks, with their working boxes:
    pieces of ink outside every mark (left: _leftovers's), sized and placed relative to the digits' line
    (top, height)."""
    if not marks:
        return []
    unions = [_union(m) for m in marks]
    top, _, height, _ = _line(marks)
    found = []
    for (x0, y0, x1, y1), area in left:
        bw, bh = x1 - x0, y1 - y0
        if max(bw, bh) < max(2, 0.06 * height):
            continue
        cy = (y0 + bh / 2 - top) / height  # 0 at the digits' top, 1 at their foot
        apart = all(x1 <= u[0] or x0 >= u[2] for u in unions)  # beside the digits, not a crumb of one
        # (a point or comma sits on the line's foot; lower down is a caption under it, not part of the number)
        if apart and 0.1 * height <= max(bw, bh) and bw <= 0.35 * height and bh <= 0.45 * height and 0.65 < cy < 1.2 \
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


def read_file(model: Any, path: Any, source: str | None = None, pieces: Any = None) -> dict[str, Any]:
    """read() of an image file (path or bytes), decoded as `digitlab predict` decodes it, with the boxes
    in the file's own pixels (pieces: a piece verifier or None, as read takes it). Raises ImageError
    naming the file for anything unreadable."""
    from digitlab.images import decode

    name = source or str(path)
    picture = decode(path, name=name)
    record = read(model, picture, name, pieces)
    size = file_size(path)
    return record if size is None else rescale_boxes(record, (picture.shape[1], picture.shape[0]), size)
