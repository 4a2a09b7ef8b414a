"""Pictures: a digit as the tutorial shows it (grey colormap), in a PNG or in the terminal; the
confusion matrix; a grid of misclassified digits. PNGs are written atomically."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digitlab._io import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _figure().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def show_png(image: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """The tutorial's plt.imshow(img, cmap='Greys'): dark ink on white."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(image, cmap="Greys")
    if title:
        ax.set_title(title)
    ax.axis("off")
    return _save(fig, path)


def show_terminal(image: np.ndarray) -> str:
    """Block characters, two per pixel so the digit keeps its aspect ratio; brighter ink is denser."""
    shades = " ░▒▓█"
    rows = []
    for row in image:
        rows.append("".join(shades[min(4, int(v) * 5 // 256)] * 2 for v in row))
    return "\n".join(rows)


def confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path,
                  title: str = "Confusion matrix") -> Path:
    """Draw a (classes, classes) confusion matrix of counts (rows: true class, columns: predicted) as a PNG
    at `path`, written atomically; returns the path. Raises OSError if it cannot be written."""
    plt = _figure()
    conf = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    # Log-ish colour so that the few errors are visible next to ~1,000 correct per class.
    im = ax.imshow(np.log1p(conf), cmap="Blues")
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                color="white" if np.log1p(v) > np.log1p(conf.max()) / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    return _save(fig, path)


def misclassified_tiles(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                        limit: int = 64) -> tuple[str, list[tuple[int, str]]]:
    """What misclassified.png shows: its title and, most confident mistakes first, one (image index, tile
    label) per tile shown. labels: (N,) int class indices; probs: (N, classes) probabilities. The title
    says how many are shown of how many (e.g. "64 of 93 misclassified"); a tile's label gives the image's
    index (in the test set, or in the list of the --images folder), true -> predicted digit and the
    predicted class's probability."""
    predicted = probs.argmax(1)
    wrong = np.nonzero(predicted != labels)[0]
    shown = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:limit]
    if len(shown) < len(wrong):
        title = f"{len(shown)} of {len(wrong)} misclassified, most confident first"
    else:
        title = f"{len(wrong)} misclassified, most confident first"
    tiles = [(int(i), f"#{i}\n{classes[labels[i]]}→{classes[predicted[i]]} {probs[i, predicted[i]]:.2f}")
             for i in shown]
    return title, tiles


def misclassified_png(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                      path: str | Path, limit: int = 64) -> Path:
    """A grid of the misclassified digits (images: (N, 28, 28) uint8), laid out by misclassified_tiles:
    each tile labelled "#index" over "true→predicted confidence"."""
    plt = _figure()
    title, tiles = misclassified_tiles(labels, probs, classes, limit)
    cols = 8
    nrows = max(1, -(-len(tiles) // cols))
    # Constrained layout puts the title right above the first row, whatever the number of rows
    # (a fixed suptitle position left a gap that grew as the grid shrank).
    fig, axes = plt.subplots(nrows, cols, figsize=(cols * 1.1, 0.5 + nrows * 1.45), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (i, label) in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(images[i], cmap="Greys")
        ax.set_title(label, fontsize=7, linespacing=1.1)
    fig.suptitle(f"{title}\n(#index, true→predicted, confidence)", fontsize=10)
    return _save(fig, path)
