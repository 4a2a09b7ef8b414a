"""Inputs that are not one digit: negatives for training (outlier exposure) and for the reject benchmark.

Kinds: letters and symbols rendered from the TrueType fonts of Debian packages (fonts-dejavu-core,
fonts-liberation) with random stroke width, slant, rotation and elastic distortion; scribbles; two MNIST
digits side by side; noise; blank pictures; Fashion-MNIST (Debian dataset-fashion-mnist).

Training and benchmark negatives come from disjoint sources, so the benchmark measures inputs the model
has not seen: training uses the DejaVu fonts, Bezier-curve scribbles, blob and uniform noise, composites of
MNIST training digits and Fashion-MNIST's training split; the benchmark uses the Liberation fonts,
random-walk scribbles, salt-and-pepper and Gaussian noise, composites of MNIST test digits and
Fashion-MNIST's test split. Everything is a function of its seed.

Characters that are a digit when handwritten are left out (``DIGIT_LIKE``): a model that calls a
handwritten "O" a 0 or an "l" a 1 is right, and counting those as false accepts would measure nothing.

Training images are uint8 (N, 28, 28), ink bright on black, made MNIST-style here (crop, fit in 20x20
keeping the aspect ratio, centre by mass: MNIST's own recipe) because the full preparation road costs
~9 ms per picture; benchmark pictures are larger grey pictures that the benchmark sends through prepare().
"""

from __future__ import annotations

import functools
import string
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import DataError

FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/share/fonts/opentype", "/usr/share/fonts")
# Disjoint font families: the benchmark never sees a training font.
TRAINING_FONTS = ("DejaVu",)
BENCHMARK_FONTS = ("Liberation",)

# Letters that are a digit when handwritten, left out of the negatives: O o Q D U (0); I i l j J T t ! |
# (1 or 7); Z z (2); S s (5); b G (6); B (8); g q a y (9); A h (4 in some hands).
DIGIT_LIKE = set("OoQDUIiljJTtZzSsbGBgqayAh!|")
LETTERS = "".join(c for c in string.ascii_letters if c not in DIGIT_LIKE)
# Symbols: no lone strokes or dots ("/", "\\", "(", ")", "[", "]", "-", ".", ",", "'"), which are a 1, a
# speck or nothing once fit to 20x20, and which the preparation calls empty or a 1 on its own; no integral
# sign (a slanted stroke: a 1).
SYMBOLS = "#%&@$?+*=<>~^{}" + "×÷±∞√∂≈≠∑Ωπλβ€£¥§¶©®→←↑↓♥♦♣♠"

KINDS = ("blank", "noise", "fashion", "letters", "symbols", "scribbles", "several_digits")
# Mix of a training negative batch: Fashion-MNIST is plentiful but far from digits; the synthetic kinds
# are the near misses (strokes on black, like digits) that max-softmax lets through.
TRAINING_MIX = {"fashion": 0.25, "letters": 0.3, "symbols": 0.15, "scribbles": 0.15, "several_digits": 0.1,
                "noise": 0.04, "blank": 0.01}
OE_WEIGHT = 0.5  # Hendrycks et al. 2019's lambda for vision classifiers
CANVAS = 64  # side of the pictures the synthetic kinds are drawn on


def font_files(split: str) -> list[Path]:
    """The .ttf/.otf files of a split ("training" or "benchmark"), sorted; raises DataError if none."""
    families = {"training": TRAINING_FONTS, "benchmark": BENCHMARK_FONTS}.get(split)
    if families is None:
        raise ValueError(f"split: expected training or benchmark, got {split!r}")
    found: set[Path] = set()
    for d in FONT_DIRS:
        for ext in ("ttf", "otf"):
            found.update(p for p in Path(d).rglob(f"*.{ext}") if p.name.startswith(families))
    if not found:
        raise DataError(f"no {'/'.join(families)} fonts under {', '.join(FONT_DIRS)} "
                        f"(Debian: apt-get install fonts-dejavu-core fonts-liberation)")
    return sorted(found)


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=64)
def _charset(path: str, chars: str) -> str:
    """The characters of chars that the font has a glyph for (no .notdef boxes)."""
    from fontTools.ttLib import TTFont

    cmap = TTFont(path, lazy=True).getBestCmap()
    return "".join(c for c in chars if ord(c) in cmap)


def _elastic(img: np.ndarray, rng: np.random.Generator, sigma: float, alpha: float) -> np.ndarray:
    """Elastic distortion (Simard et al. 2003): a random displacement field, smoothed by a Gaussian of
    sigma px and scaled so its largest displacement is alpha px."""
    import cv2

    h, w = img.shape
    fields = []
    for _ in range(2):
        f = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
        fields.append(f * (alpha / max(float(np.abs(f).max()), 1e-6)))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, xs + fields[0], ys + fields[1], cv2.INTER_LINEAR, borderValue=0)


def _warp(img: np.ndarray, rng: np.random.Generator, slant: float, rotate: float) -> np.ndarray:
    """A random slant (shear, up to +-slant) and rotation (up to +-rotate degrees) about the centre."""
    import cv2

    c = img.shape[0] / 2
    rot = cv2.getRotationMatrix2D((c, c), float(rng.uniform(-rotate, rotate)), 1.0)
    shear = np.array([[1, rng.uniform(-slant, slant), 0], [0, 1, 0]], np.float64)
    shear[0, 2] = -shear[0, 1] * c
    m = rot @ np.vstack([shear, [0, 0, 1]])
    return cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_LINEAR, borderValue=0)


def _glyph(rng: np.random.Generator, fonts: list[Path], chars: str, split: str) -> np.ndarray:
    """One character on a CANVAS x CANVAS float32 picture (0..255, ink bright), distorted."""
    from PIL import Image, ImageDraw

    for _ in range(20):  # a font may lack every character asked for (symbols): draw another font
        path = str(fonts[rng.integers(len(fonts))])
        have = _charset(path, chars)
        if have:
            break
    else:
        raise DataError(f"none of the fonts has any of {chars!r}")
    ch = have[rng.integers(len(have))]
    size = int(rng.integers(30, 44))
    im = Image.new("L", (CANVAS, CANVAS), 0)
    ImageDraw.Draw(im).text((CANVAS / 2, CANVAS / 2), ch, font=_font(path, size), fill=255, anchor="mm",
                            stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
    img = np.asarray(im, np.float32)
    if split == "training":
        img = _warp(img, rng, slant=0.4, rotate=15)
        return _elastic(img, rng, sigma=float(rng.uniform(5, 8)), alpha=float(rng.uniform(0.5, 3.0)))
    img = _warp(img, rng, slant=0.3, rotate=10)
    return _elastic(img, rng, sigma=float(rng.uniform(6, 10)), alpha=float(rng.uniform(0.5, 2.5)))


def _bezier_scribble(rng: np.random.Generator) -> np.ndarray:
    """Training scribbles: 2-4 cubic Bezier strokes with random control points."""
    import cv2

    img = np.zeros((CANVAS, CANVAS), np.uint8)
    t = np.linspace(0, 1, 40)[:, None]
    for _ in range(int(rng.integers(2, 5))):
        p = rng.uniform(6, CANVAS - 6, (4, 2))
        curve = ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])
        cv2.polylines(img, [curve.round().astype(np.int32)], False, 255, int(rng.integers(2, 6)), cv2.LINE_AA)
    return img.astype(np.float32)


def _walk_scribble(rng: np.random.Generator) -> np.ndarray:
    """Benchmark scribbles: 1-3 random walks with momentum (a turning pen), kept inside the canvas."""
    import cv2

    img = np.zeros((CANVAS, CANVAS), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        pos = rng.uniform(16, CANVAS - 16, 2)
        heading = rng.uniform(0, 2 * np.pi)
        pts = [pos.copy()]
        for _ in range(int(rng.integers(30, 70))):
            heading += rng.normal(0, 0.7)
            pos = np.clip(pos + rng.uniform(1.5, 3.5) * np.array([np.cos(heading), np.sin(heading)]), 4, CANVAS - 4)
            pts.append(pos.copy())
        cv2.polylines(img, [np.array(pts).round().astype(np.int32)], False, 255, int(rng.integers(2, 6)),
                      cv2.LINE_AA)
    return img.astype(np.float32)


def _pair(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """Two MNIST digits side by side on one picture, from a gap of 8 px to an overlap of 6 px, each
    shifted up or down by up to 3 px."""
    a, b = digits[rng.integers(len(digits), size=2)]
    gap = int(rng.integers(-6, 9))
    out = np.zeros((34, 56 + max(gap, 0) + 6), np.float32)
    ya, yb = rng.integers(0, 7, size=2)
    out[ya:ya + 28, 0:28] = np.maximum(out[ya:ya + 28, 0:28], a)
    x = 28 + gap
    out[yb:yb + 28, x:x + 28] = np.maximum(out[yb:yb + 28, x:x + 28], b)
    return out


def _training_noise(rng: np.random.Generator) -> np.ndarray:
    """Training noise (28x28): smooth blobs (random k x k, k in 3..7, upscaled) or uniform noise of a
    random brightness."""
    import cv2

    if rng.random() < 0.5:
        k = int(rng.integers(3, 8))
        small = rng.uniform(0, 255, (k, k)).astype(np.float32)
        return cv2.resize(small, (28, 28), interpolation=cv2.INTER_CUBIC)
    return rng.uniform(0, rng.uniform(60, 255), (28, 28)).astype(np.float32)


def _benchmark_noise(rng: np.random.Generator) -> np.ndarray:
    """Benchmark noise (28x28): salt-and-pepper (2-30% of pixels), Gaussian or uniform."""
    r = rng.random()
    if r < 1 / 3:
        return (rng.random((28, 28)) < rng.uniform(0.02, 0.3)).astype(np.float32) * 255
    if r < 2 / 3:
        return rng.normal(rng.uniform(30, 130), rng.uniform(20, 60), (28, 28)).astype(np.float32)
    return rng.uniform(0, 255, (28, 28)).astype(np.float32)


def _benchmark_blank(rng: np.random.Generator) -> np.ndarray:
    """Benchmark blanks: all black 28x28; a photo of paper (grey, uneven light, sensor noise); the same
    with a few dust specks (1-2 px dark dots), which are still empty."""
    r = rng.random()
    if r < 1 / 3:
        return np.zeros((28, 28), np.float32)
    h = w = 160
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    g = rng.uniform(170, 235) + rng.uniform(-20, 20) * xs / w + rng.uniform(-20, 20) * ys / h
    g = g + rng.normal(0, 2.0, (h, w))
    if r >= 2 / 3:
        for y, x in rng.integers(5, h - 5, (int(rng.integers(1, 5)), 2)):
            s = int(rng.integers(1, 3))
            g[y:y + s, x:x + s] -= rng.uniform(40, 120)
    return np.clip(g, 0, 255).astype(np.float32)


def to_mnist_fast(picture: np.ndarray) -> np.ndarray:
    """MNIST's own recipe for an ink-bright-on-black picture: crop to the ink, fit the longer side to 20 px
    keeping the aspect ratio (area-averaged), centre by mass in 28x28. float 0..255 (H, W) -> uint8 (28, 28);
    an inkless picture gives all zeros. A 28x28 picture is returned as it is, as prepare() does."""
    import cv2

    a = np.clip(np.asarray(picture, np.float32), 0, 255)
    if a.shape == (28, 28):
        return a.round().astype(np.uint8)
    rows, cols = np.nonzero(a > 8)
    if rows.size == 0:
        return np.zeros((28, 28), np.uint8)
    crop = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = crop.shape
    s = 20.0 / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    patch = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    patch = patch * (255.0 / max(float(patch.max()), 1e-6))
    ph, pw = patch.shape
    mass = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(ph)) / mass
    cx = (patch.sum(axis=0) @ np.arange(pw)) / mass
    top = int(np.clip(round(14 - cy), 0, 28 - ph))
    left = int(np.clip(round(14 - cx), 0, 28 - pw))
    out = np.zeros((28, 28), np.float32)
    out[top:top + ph, left:left + pw] = patch
    return np.clip(out, 0, 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=2)
def load_fashion(fashion_dir: str | Path | None = None) -> Any:
    """Fashion-MNIST (a digitlab.data.DigitData) from fashion_dir, else from its cache or system folder
    (/usr/share/datasets/fashion-mnist), else as load_mnist finds it. $DIGITLAB_DATA_DIR is not looked at
    first: it names the MNIST folder, and load_mnist would take MNIST's files there for Fashion-MNIST's."""
    from digitlab.data import cache_dir, dataset_info, load_mnist

    if fashion_dir is not None:
        return load_mnist(fashion_dir, "fashion-mnist", download=False)
    for folder in (cache_dir("fashion-mnist"), *dataset_info("fashion-mnist").system_dirs):
        if Path(folder).is_dir():
            try:
                return load_mnist(folder, "fashion-mnist", download=False)
            except DataError:
                continue
    return load_mnist(dataset="fashion-mnist")


@functools.lru_cache(maxsize=2)
def _mnist(mnist_dir: str | None) -> Any:
    from digitlab.data import load_mnist

    return load_mnist(mnist_dir)


def pictures(kind: str, n: int, seed: int = 0, split: str = "benchmark", mnist_dir: str | Path | None = None,
             fashion_dir: str | Path | None = None) -> list[np.ndarray]:
    """n pictures of one kind for a split: uint8 grey (H, W), ink bright on black (blank paper
    pictures are light: the preparation inverts them), deterministic given (kind, n, seed, split).

    Fashion-MNIST and the composites read their datasets (see load_fashion; MNIST via mnist_dir or
    $DIGITLAB_DATA_DIR). The composites use MNIST's first 50,000 training digits for training, so that a
    10% validation split stays unseen, and its test digits for the benchmark.
    Raises ValueError for an unknown kind or split."""
    if split not in ("training", "benchmark"):
        raise ValueError(f"split: expected training or benchmark, got {split!r}")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind), split == "benchmark"])
    return [np.clip(p, 0, 255).round().astype(np.uint8) for p in _draw(kind, n, rng, split, mnist_dir, fashion_dir)]


def _draw(kind: str, n: int, rng: np.random.Generator, split: str, mnist_dir: str | Path | None,
          fashion_dir: str | Path | None) -> list[np.ndarray]:
    train = split == "training"
    if kind == "fashion":
        data = load_fashion(fashion_dir)
        source = data.train_images if train else data.test_images
        return list(source[rng.choice(len(source), size=n, replace=n > len(source))].astype(np.float32))
    if kind == "several_digits":
        data = _mnist(None if mnist_dir is None else str(mnist_dir))
        digits = data.train_images[:50000] if train else data.test_images
        return [_pair(rng, digits) for _ in range(n)]
    if kind in ("letters", "symbols"):
        fonts = font_files(split)
        chars = LETTERS if kind == "letters" else SYMBOLS
        return [_glyph(rng, fonts, chars, split) for _ in range(n)]
    make: Any = {"scribbles": _bezier_scribble if train else _walk_scribble,
                 "noise": _training_noise if train else _benchmark_noise,
                 "blank": (lambda r: np.zeros((28, 28), np.float32)) if train else _benchmark_blank}[kind]
    return [make(rng) for _ in range(n)]


def training_negatives(n: int, seed: int = 0, mnist_dir: str | Path | None = None) -> np.ndarray:
    """n training negatives mixed per TRAINING_MIX, uint8 (n, 28, 28) MNIST-style, in a seeded random order."""
    counts = {k: int(round(share * n)) for k, share in TRAINING_MIX.items()}
    counts["letters"] += n - sum(counts.values())
    images = [to_mnist_fast(p) for kind, c in counts.items() if c > 0
              for p in pictures(kind, c, seed, "training", mnist_dir)]
    out = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return out[np.random.default_rng([seed, 99]).permutation(len(out))]


@functools.lru_cache(maxsize=2)
def _pool(size: int, seed: int, mnist_dir: str | None) -> np.ndarray:
    return training_negatives(size, seed, mnist_dir)


def negative_batch(rng_seed: int, n: int, mnist_dir: str | Path | None = None, pool_size: int = 20000) -> np.ndarray:
    """n training negatives for one training step, uint8 (n, 28, 28): drawn (with replacement) by
    rng_seed from a pool of pool_size made once per process (seed 0; ~10-20 s on one core)."""
    pool = _pool(pool_size, 0, None if mnist_dir is None else str(mnist_dir))
    return pool[np.random.default_rng(rng_seed).integers(len(pool), size=n)]


def oe_loss(logits_neg):  # (torch.Tensor (M, C)) -> torch.Tensor ()
    """Outlier exposure (Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure",
    ICLR 2019): cross-entropy from the uniform distribution to the softmax of the negatives' logits,
    mean over the batch: -(1/C) sum_c log softmax(z)_c = logsumexp(z) - mean(z). Add OE_WEIGHT times it
    to the digits' cross-entropy. Returns 0 for an empty batch."""
    import torch

    if logits_neg.shape[0] == 0:
        return logits_neg.sum() * 0.0
    z = logits_neg.float()
    return (torch.logsumexp(z, dim=1) - z.mean(dim=1)).mean()
