"""The piece verifier for reading numbers (issue 15): is a piece cut from a mark one whole digit, and which?

digitlab.reading over-cuts a mark that may hold touching digits and chooses the chain of pieces that
reads best. The digit classifier was trained on whole digits only: it is often sure of a fragment of a
digit (the left half of a 0 read "1") or of two digits read as one. The verifier is a small CNN of the
same kind (digitlab.model's layer lists, run in NumPy/onnxruntime like any DigitModel, no torch at
inference) trained on the pieces themselves, cut by the reader's own cut paths from synthetic strings of
MNIST *training* digits (digitlab.synth.number_picture_owners tells which digit owns each pixel). Its 12
classes: "0".."9" (the piece is that digit, whole), "part" (less than one digit) and "more" (a digit and
more of another, or several). Its file is an ordinary model file (safetensors + JSON metadata, classes
PIECE_CLASSES), found beside the digit model as MODEL.pieces.safetensors (companion_path) or named with
`digitlab read --pieces FILE`; reading works without it, as before.

Train one (torch; 15-40 minutes on 2 cores with the defaults; seeded, so the same seed gives the same file
on one machine):

    python -m digitlab.pieces OUT.pieces.safetensors [--strings 3000] [--epochs 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ModelFileError

PIECE_CLASSES = [str(d) for d in range(10)] + ["part", "more"]
WHOLE = 0.75  # a piece holding this share of a digit's ink (and little else) is that digit, whole
STRAY = 0.15  # ... and at most this share of the piece's ink from other digits
MORE = 0.2  # a piece whose ink is over this share another digit's is "more" than one digit
PART = 0.65  # a piece under this share of its digit's ink, with little from others, is "part" of one
# (pieces between these bounds are left out of training: neither label is right for them)
SPACING_SHARE = {"touching": 0.6, "narrow": 0.25, "wide": 0.15}  # training strings by spacing
TRAIN_DIGITS = (0, 50_000)  # MNIST training images drawn (50,000-59,999 are left for tuning the reader)
ARCH = {"convs": [24, 48, 48], "dense": 64, "classes": len(PIECE_CLASSES)}  # the `small` net, 12 outputs


def companion_path(model_path: str | Path) -> Path:
    """Where a digit model's piece verifier is looked for: MODEL.pieces.safetensors beside it."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".pieces.safetensors")


def load_verifier(path: str | Path) -> Any:
    """Load a piece verifier (a DigitModel whose classes are PIECE_CLASSES). Raises ModelFileError naming
    the file when it is not a model file or not a verifier."""
    from digitlab.modelfile import load

    return checked_verifier(load(path))


def checked_verifier(pieces: Any) -> Any:
    """A piece verifier from a path (load_verifier) or a loaded model, which must be one. Raises
    ModelFileError naming it when it is a digit model (or any model without PIECE_CLASSES)."""
    if isinstance(pieces, (str, Path)) or hasattr(pieces, "__fspath__"):
        return load_verifier(pieces)
    classes = getattr(pieces, "classes", None)
    if classes != PIECE_CLASSES:
        where = getattr(pieces, "path", None) or "pieces"
        raise ModelFileError(f"{where}: not a piece verifier (classes {classes[:12] if classes else classes}, "
                             f"expected {PIECE_CLASSES})")
    return pieces


def digit_model(path: str | Path) -> Any:
    """Load the digit model to read with. Raises ModelFileError naming the file when it is a piece verifier
    (its classes are PIECE_CLASSES: reading with it would answer "part" and "more" as digits)."""
    from digitlab.modelfile import load

    model = load(path)
    if model.classes == PIECE_CLASSES:
        raise ModelFileError(f"{path}: a piece verifier, not a digit model; give the digit model as MODEL "
                             "(its verifier beside it as MODEL.pieces.safetensors, or --pieces FILE)")
    return model


def find_verifier(model_path: str | Path, pieces: str | Path | None = None) -> Any:
    """The verifier named (pieces), else the model's companion (companion_path) if there is one, else None."""
    if pieces is not None:
        return load_verifier(pieces)
    companion = companion_path(model_path)
    return load_verifier(companion) if companion.is_file() else None


def label_piece(weights: np.ndarray, totals: np.ndarray) -> int | None:
    """A piece's class index in PIECE_CLASSES from the ink it holds of each digit (weights (N,)) and each
    digit's whole ink (totals (N,)); its digit is given by the caller (returned index < 10 means whole:
    the caller replaces it by the digit). Returns 0 for whole, 10 part, 11 more, None between."""
    held = float(weights.sum())
    if held <= 0:
        return None
    d = int(np.argmax(weights))
    share, stray = float(weights[d] / max(totals[d], 1e-6)), 1.0 - float(weights[d]) / held
    second = np.sort(weights / np.maximum(totals, 1e-6))[-2] if len(weights) > 1 else 0.0
    if stray > MORE or second > MORE:
        return 11
    if share >= WHOLE and stray <= STRAY:
        return 0
    if share < PART and stray <= STRAY:
        return 10
    return None


def piece_samples(images: np.ndarray, labels: np.ndarray, strings: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Labelled pieces cut by digitlab.reading's cut paths from `strings` synthetic numbers (2-8 of the
    given digits, uint8 (N, 28, 28), spacings per SPACING_SHARE). Every mark is over-cut (not only the
    marks the reader doubts), and the whole marks are samples too. Returns images uint8 (M, 28, 28),
    classes int64 (M,) (PIECE_CLASSES indices) and counts: strings, pieces, and "cuttable": the share
    of marks whose digits are a chain of whole pieces (what the best chain could at most get right)."""
    from digitlab.synth import number_picture_owners

    rng = np.random.default_rng(seed)
    xs, ys, seen, ok = [], [], 0, 0
    for _ in range(strings):
        spacing = str(rng.choice(list(SPACING_SHARE), p=list(SPACING_SHARE.values())))
        idx = rng.choice(len(images), size=int(rng.integers(2, 9)), replace=False)
        picture, _, owner = number_picture_owners(images[idx], rng, spacing)
        (marks, cuttable), samples = _string_samples(picture, owner, labels[idx])
        seen, ok = seen + marks, ok + cuttable
        xs += [image for image, _ in samples]
        ys += [label for _, label in samples]
    counts = {"strings": strings, "pieces": len(ys), "cuttable": ok / max(seen, 1)}
    return np.stack(xs), np.array(ys, np.int64), counts


def _string_samples(picture: np.ndarray, owner: np.ndarray, digits: np.ndarray
                    ) -> tuple[tuple[int, int], list[tuple[np.ndarray, int]]]:
    """One synthetic number's marks, found and over-cut as digitlab.reading does, each piece labelled
    from the owner map (int16, the picture's size): ((marks, marks a chain of whole pieces covers),
    [(28x28 uint8 image, class)])."""
    import cv2

    from digitlab import reading as r
    from digitlab.prepare import find_marks, to_28x28

    ink, _, _ = r._ink_at_digit_scale(picture)
    marks = find_marks(ink, ink > 0)
    if not marks:
        return (0, 0), []
    marks += r._short_digits(ink, marks)
    own = cv2.resize(owner, (ink.shape[1], ink.shape[0]), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    n = len(digits)
    totals = np.bincount(own[own >= 0], weights=ink[own >= 0], minlength=n)
    crops = [r._mark_ink(ink, m) for m in marks]
    line = float(np.median([c.shape[0] for c, _ in crops]))
    samples, cuttable = [], 0
    for crop, box in crops:
        rows, w = crop.shape
        h = max(rows, line)
        mine = own[box[1]:box[3], box[0]:box[2]]
        paths = [np.zeros(rows, np.int64), *r._cut_paths(crop, max(1, math.ceil(r.MAX_CUTS_PER_HEIGHT * w / h))),
                 np.full(rows, w, np.int64)]
        middle, cols, wholes = [float(p.mean()) for p in paths], np.arange(w), set()
        for i in range(len(paths)):
            for j in range(i + 1, len(paths)):
                last = (i, j) == (0, len(paths) - 1)
                if not last and middle[j] - middle[i] > r.MAX_PIECE_WIDTH * h:
                    continue
                keep = (cols >= paths[i][:, None]) & (cols < paths[j][:, None])
                piece = np.where(keep, crop, 0)
                image = to_28x28(crop) if last else r._piece(piece, box)[0]
                on = keep & (mine >= 0) & (piece > 0)
                label = label_piece(np.bincount(mine[on], weights=piece[on], minlength=n), totals)
                if image is None or label is None:
                    continue
                if label == 0:
                    label = int(digits[int(np.argmax(np.bincount(mine[on], weights=piece[on], minlength=n)))])
                    wholes.add((i, j))
                samples.append((image, label))
        cuttable += _chained(wholes, len(paths))
    return (len(crops), cuttable), samples


def _chained(pieces: set[tuple[int, int]], n: int) -> bool:
    """Whether pieces (i, j) make a chain from boundary 0 to n - 1."""
    reached = {0}
    for j in range(1, n):
        if any((i, j) in pieces for i in reached):
            reached.add(j)
    return n - 1 in reached


def train_verifier(out: str | Path, strings: int = 3000, epochs: int = 4, seed: int = 0,
                   data_dir: str | None = None, threads: int = 2, quiet: bool = True) -> dict[str, Any]:
    """Train a piece verifier on piece_samples of MNIST training digits TRAIN_DIGITS (torch, Adam, seeded)
    and save it to out (a model file, classes PIECE_CLASSES). Returns its training summary (also in the
    file's metadata under "training"): strings, pieces, cuttable share, held-out piece accuracy, seconds."""
    import torch

    from digitlab.data import load_mnist
    from digitlab.model import ArchConfig, build_torch
    from digitlab.modelfile import save

    start = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    data = load_mnist(data_dir)
    lo, hi = TRAIN_DIGITS
    x, y, counts = piece_samples(data.train_images[lo:hi], data.train_labels[lo:hi], strings, seed)
    if not quiet:
        print(f"{counts['pieces']} pieces from {strings} numbers ({time.perf_counter() - start:.0f} s)", flush=True)
    held = len(y) // 10  # the last tenth: held out to report the verifier's accuracy on pieces
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)[:, None]
    yt = torch.from_numpy(y)
    arch = ArchConfig(**ARCH)
    net = build_torch(arch)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil((len(y) - held) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        if not quiet:
            print(f"epoch {epoch + 1}/{epochs} ({time.perf_counter() - start:.0f} s)", flush=True)
        net.train()
        for batch in torch.randperm(len(y) - held, generator=gen).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt[batch]), yt[batch])
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(xt[-held:]).argmax(1) == yt[-held:]).float().mean()) if held else float("nan")
    summary = {**counts, "epochs": epochs, "seed": seed, "train_digits": list(TRAIN_DIGITS),
               "held_out_accuracy": round(accuracy, 4), "seconds": round(time.perf_counter() - start, 1)}
    weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    save(out, weights, {"architecture": "pieces", "arch_config": arch.to_dict(), "dataset": "mnist",
                        "classes": PIECE_CLASSES, "training": summary})
    return summary


def main(argv: list[str] | None = None) -> None:
    """`python -m digitlab.pieces OUT [--strings N] [--epochs N] [--seed N] [--data-dir DIR]`."""
    from digitlab.config import TrainConfig, check_output
    from digitlab.errors import DigitlabError

    ap = argparse.ArgumentParser(prog="python -m digitlab.pieces", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--strings", type=int, default=3000, help="synthetic numbers the pieces are cut from")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    for name in ("strings", "epochs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)}: expected 1 or more")
    try:  # before any training: an existing OUT, a folder or a link is refused as `digitlab train` refuses it
        check_output(TrainConfig(out=args.out, overwrite=args.overwrite))
    except DigitlabError as e:
        ap.error(str(e).replace("--out", "OUT"))
    print(train_verifier(args.out, args.strings, args.epochs, args.seed, args.data_dir, quiet=False))


if __name__ == "__main__":
    main()
