"""The one road from any decoded picture to what the model sees: prepare().

Every door (files, bytes, PIL images, NumPy arrays, torch tensors, lists, JSON pixels, uploads, batches)
decodes its input to a picture and then calls prepare(); nothing else makes model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitlab.images import to_mnist


@dataclass
class Prepared:
    """What prepare() found in one picture.

    image: uint8 (28, 28), MNIST-style (ink bright on black, fit to 20x20, centred by mass); all zeros
    when status is "empty". status: "digit" | "empty" | "several_digits". marks: digit-sized marks found.
    boxes: each mark's [x0, y0, x1, y1] in the original picture's pixels (x1, y1 exclusive)."""

    image: np.ndarray
    status: str = "digit"
    marks: int = 1
    boxes: list[list[int]] = field(default_factory=list)


def prepare(picture: Any) -> Prepared:
    """Prepare one decoded picture (a PIL image, or a NumPy array (H, W) grey / (H, W, 3|4) RGB(A),
    uint8 0..255 or float 0..1) for the model. Raises ImageError for a picture that is not 2-D."""
    image = to_mnist(picture)
    return Prepared(image=image, status="empty" if not image.any() else "digit", marks=int(image.any()))
