"""digitlab: train, evaluate, inspect and serve handwritten-digit recognizers.

Nothing heavy is imported here: ``import digitlab`` is instant, and torch is imported only by
training (inference runs on NumPy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from digitlab.modelfile import DigitModel
    from digitlab.train import TrainConfig


def load(path: str) -> DigitModel:
    """Load a model file (digitlab .safetensors, or a Keras .h5/.keras of the tutorial's network)."""
    from digitlab.modelfile import load as _load

    return _load(path)


def train(config: TrainConfig | None = None, **overrides: Any) -> DigitModel:
    """Train a model (see digitlab.train.TrainConfig); returns the trained DigitModel."""
    from digitlab.train import train as _train

    return _train(config, **overrides)


__all__ = ["__version__", "load", "train"]
