"""Plots: the misclassified grid's title and tile labels, and its layout in the PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digitlab.plots import misclassified_png, misclassified_tiles

CLASSES = [str(d) for d in range(10)]


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """Six images; #1, #2, #4, #5 are wrong, with confidences 0.6, 0.9, 0.8, 0.7."""
    labels = np.array([0, 1, 2, 3, 4, 5])
    predicted = np.array([0, 7, 3, 3, 9, 6])
    confidence = np.array([0.95, 0.6, 0.9, 0.99, 0.8, 0.7])
    probs = np.full((6, 10), 0.0)
    for i, (p, c) in enumerate(zip(predicted, confidence, strict=True)):
        probs[i] = (1 - c) / 9
        probs[i, p] = c
    return labels, probs


def test_title_says_shown_of_total_and_tiles_are_labelled():
    labels, probs = hand_made()
    title, tiles = misclassified_tiles(labels, probs, CLASSES, limit=3)
    assert title.startswith("3 of 4 misclassified")
    # Most confident mistakes first; each tile: index, true -> predicted, confidence.
    assert [i for i, _ in tiles] == [2, 4, 5]
    assert tiles[0][1] == "#2\n2→3 0.90"
    assert tiles[1][1] == "#4\n4→9 0.80"


def test_all_shown_when_under_the_limit():
    labels, probs = hand_made()
    title, tiles = misclassified_tiles(labels, probs, CLASSES)
    assert title.startswith("4 misclassified") and " of " not in title
    assert [i for i, _ in tiles] == [2, 4, 5, 1]


@pytest.mark.slow  # renders a full misclassified grid with matplotlib: ~3 s
def test_no_gap_under_the_title(tmp_path):
    """64 tiles of 200 mistakes: the title sits right above the first row (it was ~90 px above it)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    probs = rng.dirichlet(np.ones(10), 200)
    images = rng.integers(0, 256, (200, 28, 28)).astype(np.uint8)  # noise: every tile is dense ink
    png = misclassified_png(images, labels, probs, CLASSES, tmp_path / "m.png")
    dark = np.asarray(Image.open(png).convert("L")) < 200
    first_tile_row = int(np.argmax(dark.sum(1) > 0.3 * dark.shape[1]))
    ink = dark[:first_tile_row].any(1)
    assert ink.any()  # the title and the first tiles' labels are above the first row of images
    longest_blank, run = 0, 0
    for row_has_ink in ink[np.argmax(ink):]:
        run = 0 if row_has_ink else run + 1
        longest_blank = max(longest_blank, run)
    assert longest_blank < 25, longest_blank
    assert first_tile_row < 90, first_tile_row
