"""digitlab: train, evaluate, inspect and serve handwritten-digit recognizers.

Importing digitlab imports NumPy but not torch: training imports torch when it starts, and inference
runs on onnxruntime or NumPy.
"""

from __future__ import annotations

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


def read(model: DigitModel, picture: Any, source: str = "picture", pieces: DigitModel | None = None) -> dict[str, Any]:
    """Read the number (several digits, left to right) in one picture: a PIL image or a NumPy array
    (H, W) grey or (H, W, 3|4) RGB(A). pieces: a piece verifier (digitlab.pieces.load_verifier) or None.
    Returns {"source", "status", "text", "digits"}; see digitlab.reading.read."""
    from digitlab.reading import read as _read  # here: keeps `import digitlab` light

    return _read(model, picture, source, pieces)


def train(config: TrainConfig | None = None, **overrides: Any) -> DigitModel:
    """Train a model per a digitlab.config.TrainConfig, or a recipe with overrides
    (`digitlab.train(recipe="fast", seed=1, out="fast.safetensors")`); returns the trained DigitModel.
    Raises DigitlabError for bad settings, data or output; TrainingInterrupted on a stop signal.
    See digitlab.training.train."""
    from digitlab.training import train as _train  # here: torch loads only when training starts

    return _train(config, **overrides)


__all__ = ["__version__", "load", "read", "train"]
