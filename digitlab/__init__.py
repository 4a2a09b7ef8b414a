"""digitlab: train, evaluate, inspect and serve handwritten-digit recognizers.

Importing digitlab imports NumPy but not torch: training imports torch when it starts, and inference
runs on onnxruntime or NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The submodule digitlab.train is imported here, before the function of the same name is defined,
# so that `from digitlab.train import TrainConfig` later cannot replace `digitlab.train` (the
# function) with the module: Python sets that attribute only when it first loads the submodule.
from digitlab import train as _train_module  # noqa: E402

if TYPE_CHECKING:
    from digitlab.modelfile import DigitModel
    from digitlab.train import TrainConfig


def load(path: str) -> DigitModel:
    """Load a model file (digitlab .safetensors, or a Keras .h5/.keras of the tutorial's network)."""
    from digitlab.modelfile import load as _load

    return _load(path)


def train(config: TrainConfig | None = None, **overrides: Any) -> DigitModel:
    """Train a model (see digitlab.train.TrainConfig); returns the trained DigitModel."""
    return _train_module.train(config, **overrides)


__all__ = ["__version__", "load", "train"]
