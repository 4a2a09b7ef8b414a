"""Prediction records: the one code path behind `digitlab predict`, the Python API, the HTTP API and the page."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.modelfile import DigitModel
from digitlab.prepare import Prepared


def predict_records(model: DigitModel, prepared: list[Prepared], names: list[str]) -> list[dict[str, Any]]:
    """One record per prepared picture: {"source", "status", "digit", "label", "confidence", "probabilities",
    "marks"}. status is "digit", "empty" or "several_digits" (from prepare()); "digit", "label" and
    "confidence" are null unless the status is "digit"; probabilities (floats in 0..1 over the model's
    classes) are given wherever there is ink, null for an empty picture."""
    if not prepared:
        return []
    inked = [i for i, p in enumerate(prepared) if p.status != "empty"]
    probs = model.predict(np.stack([prepared[i].image for i in inked])) if inked else np.zeros((0, 0))
    by_index = dict(zip(inked, probs, strict=True))
    classes = model.classes
    records = []
    for i, (name, p) in enumerate(zip(names, prepared, strict=True)):
        record: dict[str, Any] = {"source": name, "status": p.status, "digit": None, "label": None,
                                  "confidence": None, "probabilities": None, "marks": p.marks}
        if i in by_index:
            q = by_index[i]
            record["probabilities"] = [float(v) for v in q]
            if p.status == "digit":
                k = int(q.argmax())
                record.update(digit=k, label=classes[k], confidence=float(q[k]))
        records.append(record)
    return records


def describe(record: dict[str, Any]) -> str:
    """The record as one line of text, as the CLI prints it: `a.png: 7  (confidence 0.9981)`,
    `blank.png: no digit (empty)`, `42.png: several digits (2 marks)`."""
    status = record["status"]
    if status == "digit":
        return f"{record['source']}: {record['label']}  (confidence {record['confidence']:.4f})"
    if status == "empty":
        return f"{record['source']}: no digit (empty)"
    if status == "several_digits":
        return f"{record['source']}: several digits ({record['marks']} marks)"
    return f"{record['source']}: not a digit (confidence {max(record['probabilities']):.4f} is below the threshold)"
