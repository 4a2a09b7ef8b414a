"""Is it a digit? Scores on the model's outputs, a calibrated threshold, and the status of a prediction.

A classifier trained on ten digits gives every input one of them. Two post-hoc scores from the
literature tell digits from the rest, both computed here in NumPy (no torch), both "higher = more like
a digit":

- ``msp``: the maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified
  and Out-of-Distribution Examples in Neural Networks", ICLR 2017). Needs only the probabilities.
- ``energy``: the negative free energy ``T * logsumexp(logits / T)`` with T = 1 (Liu et al., "Energy-based
  Out-of-distribution Detection", NeurIPS 2020, whose energy is ``-T * logsumexp(logits / T)``). Needs the
  logits: probabilities only give logits up to a per-row constant, and that constant is the whole score
  (logsumexp(log p) = 0 for every row).

A threshold is calibrated on digits the model did not train on, for a target false-reject rate on digits
(``calibrate``), and stored in the model file's metadata under ``"calibration"``
(``calibration_record``). Files without one (older files, Keras imports) use ``DEFAULT_CALIBRATION``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from digitlab.errors import ModelFileError

METHODS = ("msp", "energy")
STATUSES = ("digit", "empty", "not_a_digit", "several_digits")
PREPARED_STATUSES = ("digit", "empty", "several_digits")  # what prepare() can say; the model adds not_a_digit

# For files without a calibration (older files, Keras imports of the tutorial's network). Measured on a
# `seed` recipe model (the tutorial: 5 epochs of RMSprop; trained with --val-split 0.1, seed 0) by
# `python benchmarks/reject.py MODEL --calibrate-on-val`: the MSP threshold that rejects 1% of its 6,000
# held-out validation digits is 0.809; it rejects 1.15% of the MNIST test digits. MSP, not energy, because
# a probability threshold carries over between models better: the same calibration gave MSP 0.81 (seed)
# and 0.70 (fast), energy 3.5 (seed) and 6.6 (fast). A model calibrated at training time should store its
# own, and energy where it can (without outlier exposure its AUROCs were higher; README table).
DEFAULT_CALIBRATION: dict[str, Any] = {
    "method": "msp", "threshold": 0.809, "target_frr": 0.01,
    "source": "default: a seed-recipe model's threshold for 1% false rejects on 6,000 validation digits",
}


def msp_score(probabilities: np.ndarray) -> np.ndarray:
    """Maximum softmax probability per row: (N, C) or (C,) probabilities -> (N,) or () float32 in [1/C, 1]."""
    return np.asarray(probabilities, dtype=np.float32).max(axis=-1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy per row, ``T * logsumexp(logits / T)`` (Liu et al. 2020, their -E(x; f)):
    (N, C) or (C,) logits -> (N,) or () float32, unbounded; higher = more like the training classes."""
    z = np.asarray(logits, dtype=np.float32) / temperature
    m = z.max(axis=-1)
    return (temperature * (m + np.log(np.exp(z - m[..., None]).sum(axis=-1)))).astype(np.float32)


def digit_score(outputs: np.ndarray, method: str, *, logits: bool) -> np.ndarray:
    """The score ``method`` gives each row of the model's outputs (higher = more like a digit).

    outputs: (N, C) or (C,) float; ``logits=True`` if they are logits, False if probabilities.
    Raises ValueError for an unknown method, or for energy on probabilities (it needs logits)."""
    if method == "msp":
        if not logits:
            return msp_score(outputs)
        z = np.asarray(outputs, dtype=np.float32)
        return 1 / np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1)  # the largest softmax, directly
    if method == "energy":
        if not logits:
            raise ValueError("the energy score needs logits; probabilities lose the per-row constant it measures")
        return energy_score(outputs)
    raise ValueError(f"unknown abstention method {method!r}; expected one of {', '.join(METHODS)}")


def calibrate(scores: np.ndarray, target_frr: float = 0.01, confidence: float | None = None) -> float:
    """The threshold that rejects at most ``target_frr`` of these digits: accept a score >= threshold.

    scores: (N,) digit scores of validation digits (not trained on); target_frr in (0, 1).
    Without ``confidence``: the k-th smallest score, k = floor(target_frr * N), so at most k of the N fall
    below it - on these digits; on others from the same source the rate scatters around target_frr (half
    the time above it). With ``confidence`` in (0, 1), e.g. 0.99: the k-th smallest score for the largest k
    that a false-reject rate of target_frr would reach or undercut with probability at most 1 - confidence
    (the exact binomial upper confidence bound: unseen digits from the same source are falsely rejected at
    most target_frr of the time, with that confidence; Bates et al., "Distribution-Free, Risk-Controlling
    Prediction Sets", J. ACM 2021). Too few digits to bound the rate at all give k = 0 (the lowest score).
    Raises ValueError for an empty or non-finite score list, or a target or confidence outside (0, 1)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if not 0 < target_frr < 1:
        raise ValueError(f"target_frr: must be in (0, 1), got {target_frr}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("calibrate: needs a non-empty list of finite scores")
    k = int(math.floor(target_frr * s.size))
    if confidence is not None:
        k = max(0, int(np.searchsorted(binomial_cdf(k, s.size, target_frr), 1 - confidence, side="right")) - 1)
    return float(s[k])


def binomial_cdf(k: int, n: int, p: float) -> np.ndarray:
    """P(X <= i) for i = 0..k, X ~ Binomial(n, p): (k + 1,) float64, from log-probabilities (lgamma), so
    that n in the millions neither overflows nor underflows to all zeros."""
    i = np.arange(k + 1)
    lg = np.vectorize(math.lgamma)
    log_pmf = lg(n + 1) - lg(i + 1) - lg(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
    return np.cumsum(np.exp(log_pmf))


def calibration_record(method: str, threshold: float, target_frr: float, source: str) -> dict[str, Any]:
    """The metadata entry a model file stores under ``"calibration"``; validated as it is made."""
    return check_calibration({"method": method, "threshold": float(threshold), "target_frr": float(target_frr),
                              "source": str(source)})


def check_calibration(record: Any, where: str = "calibration") -> dict[str, Any]:
    """A calibration record as read from a model file, checked; raises ModelFileError naming the field."""
    if not isinstance(record, dict):
        raise ModelFileError(f"{where}: expected an object with method, threshold, target_frr, source")
    missing = {"method", "threshold", "target_frr", "source"} - set(record)
    if missing:
        raise ModelFileError(f"{where}: missing {', '.join(sorted(missing))}")
    if record["method"] not in METHODS:
        raise ModelFileError(f"{where}.method: expected one of {', '.join(METHODS)}, got {record['method']!r}")
    t = record["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ModelFileError(f"{where}.threshold: expected a finite number, got {t!r}")
    f = record["target_frr"]
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
        raise ModelFileError(f"{where}.target_frr: expected a number in (0, 1), got {f!r}")
    if not isinstance(record["source"], str):
        raise ModelFileError(f"{where}.source: expected a string")
    return record


def calibration_of(model: Any) -> dict[str, Any]:
    """The model's stored calibration (metadata "calibration"), or DEFAULT_CALIBRATION if it has none."""
    record = getattr(model, "metadata", {}).get("calibration")
    return DEFAULT_CALIBRATION if record is None else check_calibration(record)


def accepted(outputs: np.ndarray, calibration: dict[str, Any] | None = None, *, logits: bool = False) -> np.ndarray:
    """Which rows of the model's outputs (N, C) the calibration accepts as digits: (N,) bool."""
    cal = DEFAULT_CALIBRATION if calibration is None else calibration
    return digit_score(outputs, cal["method"], logits=logits) >= cal["threshold"]


def status_for(prepared_status: str, outputs: np.ndarray, calibration: dict[str, Any] | None = None, *,
               logits: bool = False) -> str:
    """The status of one prediction: "digit" | "empty" | "not_a_digit" | "several_digits".

    prepared_status: what prepare() said ("digit", "empty", "several_digits"); only "digit" is scored.
    outputs: the model's (C,) probabilities (or logits, with ``logits=True``; energy needs logits).
    calibration: a record (see calibration_record); None means DEFAULT_CALIBRATION.
    Raises ValueError for an unknown prepared status or a score the outputs cannot give."""
    if prepared_status in ("empty", "several_digits"):
        return prepared_status
    if prepared_status != "digit":
        raise ValueError(f"prepared status: expected one of {', '.join(PREPARED_STATUSES)}, got {prepared_status!r}")
    cal = DEFAULT_CALIBRATION if calibration is None else calibration
    return "digit" if float(digit_score(outputs, cal["method"], logits=logits)) >= cal["threshold"] else "not_a_digit"


def logits(model: Any, images: Any) -> np.ndarray:
    """The model's logits (N, C) float32 for images as DigitModel.predict takes them (DigitModel.logits;
    predict(..., logits=True) gives them with the probabilities from one forward pass)."""
    return model.logits(images)
