"""Prediction records: the one code path behind `digitlab predict`, the HTTP API and the page."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.modelfile import DigitModel


def predict_records(model: DigitModel, inputs: list[np.ndarray], names: list[str]) -> list[dict[str, Any]]:
    """One record per MNIST-style uint8 (28, 28) input: source, digit, label, confidence, probabilities."""
    if not inputs:
        return []
    probs = model.predict(np.stack(inputs))
    classes = model.classes
    records = []
    for name, p in zip(names, probs, strict=True):
        digit = int(p.argmax())
        records.append({"source": name, "digit": digit, "label": classes[digit], "confidence": float(p[digit]),
                        "probabilities": [float(v) for v in p]})
    return records
