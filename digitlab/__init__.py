"""digitlab: train, evaluate, inspect and serve handwritten-digit recognizers.

Importing digitlab imports NumPy but not torch: training imports torch when it starts, and inference
runs on onnxruntime or NumPy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from digitlab.config import TrainConfig
    from digitlab.modelfile import DigitModel


def load(path: str) -> DigitModel:
    """Load a model file (digitlab .safetensors, or a Keras .h5/.keras of the tutorial's network).
    Raises ModelFileError (a DigitlabError) for a missing, truncated, corrupt, foreign or too-new file."""
    from digitlab.modelfile import load as _load  # here, not above: modelfile imports digitlab itself

    return _load(path)


def read(model: DigitModel | str | os.PathLike, picture: Any, source: str = "picture",
         pieces: DigitModel | str | os.PathLike | None = "auto") -> dict[str, Any]:
    """Read the number (several digits, left to right) in one picture: an image file's path (decoded as
    `digitlab read` decodes it; boxes in the file's pixels), a PIL image or a NumPy array (H, W) grey or
    (H, W, 3|4) RGB(A). model: a DigitModel (digitlab.load) or a model file's path. pieces: "auto" (the
    piece verifier beside the model's file, MODEL.pieces.safetensors, if there is one: what `digitlab read`
    and the server use), a verifier's path or DigitModel, or None (read without one). Returns {"source",
    "status", "text", "digits"}; see digitlab.reading.read. Raises ImageError for a picture that cannot be
    read, ModelFileError for a model or verifier file that cannot be used (a verifier given as the model,
    a digit model given as the verifier)."""
    from digitlab.pieces import checked_verifier, digit_model, find_verifier
    from digitlab.reading import read as _read  # here: keeps `import digitlab` light
    from digitlab.reading import read_file

    if isinstance(model, (str, os.PathLike)):
        model = digit_model(model)
    if isinstance(pieces, str) and pieces == "auto":
        pieces = None if getattr(model, "path", None) is None else find_verifier(model.path)
    elif pieces is not None:
        pieces = checked_verifier(pieces)
    if isinstance(picture, (str, os.PathLike)):
        return read_file(model, picture, None if source == "picture" else source, pieces)
    return _read(model, picture, source, pieces)


def train(config: TrainConfig | None = None, **overrides: Any) -> DigitModel:
    """Train a model per a digitlab.config.TrainConfig, or a recipe with overrides
    (`digitlab.train(recipe="fast", seed=1, out="fast.safetensors")`); returns the trained DigitModel.
    Raises DigitlabError for bad settings, data or output; TrainingInterrupted on a stop signal.
    See digitlab.training.train."""
    from digitlab.training import train as _train  # here: torch loads only when training starts

    return _train(config, **overrides)


__all__ = ["__version__", "load", "read", "train"]
