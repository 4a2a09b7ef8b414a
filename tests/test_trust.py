"""Abstention scores, calibration and statuses (digitlab.trust): fast, no training."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from digitlab import trust
from digitlab.errors import ModelFileError


def test_msp_is_the_largest_probability():
    p = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    assert trust.msp_score(p).tolist() == pytest.approx([0.7, 0.5])


def test_energy_is_logsumexp_and_stable_for_large_logits():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -5.0]], np.float32)
    s = trust.energy_score(z)
    assert s[0] == pytest.approx(np.log(np.exp(z[0]).sum()), rel=1e-6)
    assert s[1] == pytest.approx(1000 + np.log(2), rel=1e-6)  # a naive exp would overflow
    assert np.isfinite(s).all()


def test_energy_sees_what_probabilities_hide():
    """Logits that differ by a constant per row have the same probabilities but not the same energy:
    the reason energy needs the logits."""
    z = np.array([[2.0, 0.0, 0.0]], np.float32)
    assert trust.digit_score(z, "msp", logits=True) == pytest.approx(trust.digit_score(z + 5, "msp", logits=True))
    assert trust.digit_score(z + 5, "energy", logits=True) == pytest.approx(trust.energy_score(z) + 5)
    with pytest.raises(ValueError, match="needs logits"):
        trust.digit_score(np.array([[0.9, 0.1]]), "energy", logits=False)
    with pytest.raises(ValueError, match="unknown abstention method"):
        trust.digit_score(z, "knn", logits=True)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibrate_meets_its_target_false_reject_rate(target):
    scores = np.random.default_rng(0).normal(size=5000)
    t = trust.calibrate(scores, target)
    frr = (scores < t).mean()
    assert frr <= target
    assert frr >= target - 1 / len(scores)  # and rejects no fewer than it may


def test_calibrate_with_confidence_bounds_the_rate_on_unseen_digits():
    """Calibrated on N digits, the k-th smallest score lets the rate on unseen digits from the same source
    scatter around the target, above it about half the time; with confidence 0.95 at most 5% of
    calibrations may exceed it. Scores are standard normal, so the true rate of a threshold is known."""
    rng = np.random.default_rng(1)
    true_rate = np.vectorize(lambda t: 0.5 * (1 + math.erf(t / math.sqrt(2))))
    plain = [trust.calibrate(rng.normal(size=3000), 0.02) for _ in range(400)]
    bounded = [trust.calibrate(rng.normal(size=3000), 0.02, confidence=0.95) for _ in range(400)]
    assert (true_rate(plain) > 0.02).mean() > 0.3
    assert (true_rate(bounded) > 0.02).mean() <= 0.08  # 5% expected; 400 trials scatter by ~1 point
    assert np.mean(true_rate(bounded)) > 0.014  # and not much stricter than it needs to be


def test_calibrate_with_confidence_is_the_exact_binomial_bound():
    n, p = 500, 0.05
    cdf = [sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1)) for k in range(30)]
    assert trust.binomial_cdf(29, n, p) == pytest.approx(cdf, rel=1e-9)
    k = max(i for i, c in enumerate(cdf) if c <= 0.01)
    assert trust.calibrate(np.arange(n, dtype=float), p, confidence=0.99) == k
    assert trust.calibrate(np.arange(50, dtype=float), p, confidence=0.99) == 0  # too few to bound: none rejected
    with pytest.raises(ValueError, match="confidence"):
        trust.calibrate(np.ones(10), 0.01, confidence=1.0)


def test_calibrate_refuses_bad_input():
    with pytest.raises(ValueError, match="target_frr"):
        trust.calibrate(np.ones(10), 0)
    with pytest.raises(ValueError, match="non-empty"):
        trust.calibrate(np.array([]), 0.01)
    with pytest.raises(ValueError, match="finite"):
        trust.calibrate(np.array([1.0, np.nan]), 0.01)


def test_status_for_each_status():
    cal = trust.calibration_record("msp", 0.8, 0.01, "test")
    confident = np.array([0.01] * 9 + [0.91], np.float32)
    unsure = np.full(10, 0.1, np.float32)
    assert trust.status_for("digit", confident, cal) == "digit"
    assert trust.status_for("digit", unsure, cal) == "not_a_digit"
    # What prepare() decided stands, whatever the model says.
    assert trust.status_for("empty", confident, cal) == "empty"
    assert trust.status_for("several_digits", confident, cal) == "several_digits"
    with pytest.raises(ValueError, match="prepared status"):
        trust.status_for("maybe", confident, cal)


def test_status_for_energy_on_logits():
    cal = trust.calibration_record("energy", 5.0, 0.01, "test")
    assert trust.status_for("digit", np.array([8.0, 0, 0]), cal, logits=True) == "digit"
    assert trust.status_for("digit", np.array([1.0, 0, 0]), cal, logits=True) == "not_a_digit"


def test_default_calibration_is_valid_and_used_without_one():
    class Stub:
        metadata: dict = {}

    assert trust.check_calibration(dict(trust.DEFAULT_CALIBRATION)) == trust.DEFAULT_CALIBRATION
    assert trust.calibration_of(Stub()) is trust.DEFAULT_CALIBRATION
    assert trust.status_for("digit", np.full(10, 0.1), None) == "not_a_digit"  # None: the default


@pytest.mark.parametrize("record, field", [
    ("msp", "calibration"),
    ({"method": "msp", "threshold": 0.5, "target_frr": 0.01}, "missing source"),
    ({"method": "odin", "threshold": 0.5, "target_frr": 0.01, "source": ""}, "calibration.method"),
    ({"method": "msp", "threshold": float("nan"), "target_frr": 0.01, "source": ""}, "calibration.threshold"),
    ({"method": "msp", "threshold": True, "target_frr": 0.01, "source": ""}, "calibration.threshold"),
    ({"method": "msp", "threshold": 0.5, "target_frr": 1.5, "source": ""}, "calibration.target_frr"),
    ({"method": "msp", "threshold": 0.5, "target_frr": 0.01, "source": 3}, "calibration.source"),
])
def test_bad_calibration_in_a_file_is_named(record, field):
    class Stub:
        metadata = {"calibration": record}

    with pytest.raises(ModelFileError, match=field):
        trust.calibration_of(Stub())


def test_status_for_costs_under_a_tenth_of_a_millisecond():
    """The issue's budget: abstention adds <= 0.1 ms per image to an in-process prediction. Best of 5
    rounds of 1,000 calls, so that a busy machine does not fail it."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=1000).astype(np.float32)
    cal = trust.DEFAULT_CALIBRATION
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for row in probs:
            trust.status_for("digit", row, cal)
        best = min(best, (time.perf_counter() - t) / len(probs))
    assert best < 1e-4, f"{best * 1e6:.1f} us per image"


def test_trust_keeps_predict_torch_free():
    code = "import sys, digitlab.trust; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_logits_match_the_probabilities_of_predict(tiny_model_path):
    import digitlab
    from digitlab.model import softmax

    model = digitlab.load(tiny_model_path)
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(softmax(trust.logits(model, x)), model.predict(x), atol=1e-5)
