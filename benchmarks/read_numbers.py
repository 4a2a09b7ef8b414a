"""(Named read_numbers.py: a script named numbers.py would shadow the standard library's numbers module.)

Reading whole numbers: strings of 2-8 MNIST test digits on paper (digitlab.synth.number_picture), with
wide gaps, narrow gaps or touching digits, read by digitlab.read and by Tesseract 5 (the OCR people reach
for: `--psm 7`, digits whitelisted) on the same images, side by side.

Strict accuracy: the whole string right. Per-digit accuracy: digits right in place (a string read with
the wrong number of digits counts each digit of the truth that is not where the reading has it).
Time: digitlab's ms per 6-digit number (one picture at a time, this process, as `digitlab read` runs it).

    python benchmarks/read_numbers.py MODEL [--n 300] [--seed 0] [--no-tesseract] [--pieces FILE | --no-pieces]
                                            [--shrink F]

With a piece verifier (digitlab.pieces: --pieces FILE, or MODEL.pieces.safetensors beside the model)
the reader uses it, as `digitlab read` does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

import digitlab  # noqa: E402
from digitlab.data import load_mnist  # noqa: E402
from digitlab.pieces import find_verifier  # noqa: E402
from digitlab.synth import SPACINGS, number_picture  # noqa: E402

TESSERACT = ["--psm", "7", "-c", "tessedit_char_whitelist=0123456789"]


def tesseract(picture: np.ndarray, folder: Path) -> str:
    """Tesseract's reading of a grey picture (float 0..1): digits only, whitespace dropped."""
    path = folder / "number.png"
    Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(path)
    out = subprocess.run(["tesseract", str(path), "stdout", *TESSERACT], capture_output=True, text=True,
                         timeout=60, env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"})
    return "".join(out.stdout.split())


def digits_right(truth: str, text: str) -> int:
    """The truth's digits that the reading has in the same place."""
    return sum(a == b for a, b in zip(truth, text, strict=False))


def cases(images: np.ndarray, labels: np.ndarray, n: int, seed: int, shrink: float = 1.0):
    """n (spacing, truth, picture) cases: spacings in turn, 2-8 digits, test digits drawn at random; each
    picture resized by shrink (OpenCV area averaging: 0.3 makes digits ~10 px tall, written small)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        spacing = list(SPACINGS)[i % len(SPACINGS)]
        idx = rng.choice(len(images), size=int(rng.integers(2, 9)), replace=False)
        picture, _ = number_picture(images[idx], rng, spacing)
        if shrink != 1.0:
            picture = cv2.resize(picture, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        yield spacing, "".join(str(v) for v in labels[idx]), picture


def ms_per_six(model, images: np.ndarray, seed: int, repeats: int = 30, pieces=None) -> float:
    """Median ms for digitlab.read of one 6-digit number (narrow gaps), after a warm-up."""
    rng = np.random.default_rng(seed + 1)
    pictures = [number_picture(images[rng.choice(len(images), 6, replace=False)], rng, "narrow")[0]
                for _ in range(repeats)]
    digitlab.read(model, pictures[0], pieces=pieces)
    times = []
    for p in pictures:
        t = time.perf_counter()
        digitlab.read(model, p, pieces=pieces)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=300, help="numbers (spread over the three spacings)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tesseract", action="store_true", help="digitlab only")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--pieces", default=None, help="a piece verifier (default: MODEL.pieces.safetensors if there)")
    ap.add_argument("--no-pieces", action="store_true", help="read without a piece verifier")
    ap.add_argument("--shrink", type=float, default=1.0,
                    help="resize every picture by this factor (0.3: numbers written small)")
    args = ap.parse_args()
    model = digitlab.load(args.model)
    verifier = None if args.no_pieces else find_verifier(args.model, args.pieces)
    data = load_mnist(args.data_dir)
    peer = not args.no_tesseract and shutil.which("tesseract") is not None
    # [reader][group] -> [strings right, strings, digits right, digits]
    tally: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))
    unsure = 0
    with tempfile.TemporaryDirectory() as tmp:
        for spacing, truth, picture in cases(data.test_images, data.test_labels, args.n, args.seed, args.shrink):
            record = digitlab.read(model, picture, pieces=verifier)
            unsure += record["status"] == "unsure"
            readings = {"digitlab": record["text"]}
            if peer:
                readings["tesseract"] = tesseract(picture, Path(tmp))
            for reader, text in readings.items():
                for group in (spacing, f"{len(truth)} digits", "all"):
                    t = tally[reader][group]
                    t[0] += text == truth
                    t[1] += 1
                    t[2] += digits_right(truth, text)
                    t[3] += len(truth)
    readers = list(tally)
    groups = [*SPACINGS, *(f"{k} digits" for k in range(2, 9)), "all"]
    print(f"Reading numbers: {args.n} strings of 2-8 MNIST test digits (seed {args.seed}), "
          f"model {Path(args.model).name}, piece verifier {'yes' if verifier else 'none'}"
          + (f", pictures resized by {args.shrink:g}" if args.shrink != 1.0 else ""))
    print("| strings | n | " + " | ".join(f"{r} strict | {r} per digit" for r in readers) + " |")
    print("|---|---:|" + "---:|---:|" * len(readers))
    for g in groups:
        cells = []
        for r in readers:
            s_ok, s_n, d_ok, d_n = tally[r][g]
            cells += [f"{100 * s_ok / max(s_n, 1):.1f}%", f"{100 * d_ok / max(d_n, 1):.1f}%"]
        print(f"| {g} | {tally[readers[0]][g][1]} | " + " | ".join(cells) + " |")
    print(f"digitlab: status unsure for {100 * unsure / max(args.n, 1):.1f}% of the strings")
    print(f"digitlab: {ms_per_six(model, data.test_images, args.seed, pieces=verifier):.1f} ms per 6-digit number "
          "(median of 30, one at a time)")
    print(machine_line("opencv-python-headless", "onnxruntime"))


if __name__ == "__main__":
    main()
