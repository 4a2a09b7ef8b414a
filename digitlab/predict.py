"""Prediction records: the one code path behind `digitlab predict`, the Python API, the HTTP API and the page."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.modelfile import DigitModel
from digitlab.prepare import Prepared
from digitlab.trust import PREPARED_STATUSES, accepted, calibration_of


def predict_records(model: DigitModel, prepared: list[Prepared], names: list[str]) -> list[dict[str, Any]]:
    """One record per prepared picture: {"source", "status", "digit", "label", "confidence", "probabilities",
    "marks"}. status is "empty" or "several_digits" (from prepare()), "not_a_digit" (the model's score
    below the threshold calibrated for it, digitlab.trust) or "digit"; "digit", "label" and "confidence"
    are null unless the status is "digit"; probabilities (floats in 0..1 over the model's classes) are
    given wherever there is ink, null for an empty picture."""
    if not prepared:
        return []
    calibration = calibration_of(model)
    # The energy score needs logits: forward gives them from the same pass as the probabilities.
    use_logits = calibration["method"] == "energy"
    inked = [i for i, p in enumerate(prepared) if p.status != "empty"]
    by_index = {i: k for k, i in enumerate(inked)}
    probs, logits = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    if inked:  # prepared images go straight to the network: prepare() made them, no second check
        probs, logits = model.forward(np.stack([prepared[i].image for i in inked]))
    # One scoring call for the whole batch (status_for's rule, row by row it cost more than the network).
    ok = accepted(logits if use_logits else probs, calibration, logits=use_logits) if inked else []
    classes = model.classes
    records = []
    for i, (name, p) in enumerate(zip(names, prepared, strict=True)):
        record: dict[str, Any] = {"source": name, "status": p.status, "digit": None, "label": None,
                                  "confidence": None, "probabilities": None, "marks": p.marks}
        if i in by_index:
            q = probs[by_index[i]]
            record["probabilities"] = q.tolist()
            if p.status == "digit":
                record["status"] = "digit" if ok[by_index[i]] else "not_a_digit"
            elif p.status not in PREPARED_STATUSES:
                raise ValueError(f"prepared status: expected one of {', '.join(PREPARED_STATUSES)}, got {p.status!r}")
            if record["status"] == "digit":
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


def explain_records(model: DigitModel, prepared: list[Prepared], names: list[str],
                    method: str = "occlusion") -> list[dict[str, Any]]:
    """predict_records plus {"method", "attribution"}: a 28x28 list of floats (evidence for the answer
    positive, against it negative; digitlab.explain), null when the picture is empty."""
    from digitlab.explain import explain

    records = predict_records(model, prepared, names)
    for record, p in zip(records, prepared, strict=True):
        record["method"] = method
        record["attribution"] = None
        if p.status != "empty":
            found = explain(model, p.image, method=method)
            if found["attribution"] is not None:
                record["attribution"] = [[float(v) for v in row] for row in found["attribution"]]
    return records
