"""Metrics: checked on a hand-made confusion matrix, and the training-time evaluation against them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab.evaluate import evaluate_torch, format_report, metrics_from_probs


def probs_for(predicted: list[int], p_true: list[float], labels: list[int], classes: int) -> np.ndarray:
    """(N, C) probabilities whose argmax is `predicted` and whose true-class probability is `p_true`."""
    probs = np.zeros((len(labels), classes))
    for i, (pred, label, p) in enumerate(zip(predicted, labels, p_true, strict=True)):
        probs[i, label] = p
        if pred != label:
            probs[i, pred] = 1 - p  # > p: p < 0.5 for the mistakes below
        else:
            probs[i, (label + 1) % classes] = 1 - p
    return probs


def test_metrics_from_a_hand_made_confusion_matrix():
    # True 0 0 0 1 1 2 3, predicted 0 0 1 1 2 2 0: confusion (rows true, columns predicted)
    #   [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    labels = [0, 0, 0, 1, 1, 2, 3]
    predicted = [0, 0, 1, 1, 2, 2, 0]
    p_true = [0.9, 0.8, 0.3, 0.6, 0.2, 0.7, 0.1]
    r = metrics_from_probs(probs_for(predicted, p_true, labels, 4), np.array(labels, np.uint8), list("abcd"))
    assert r["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert (r["count"], r["errors"]) == (7, 3) and r["accuracy"] == pytest.approx(4 / 7)
    assert r["loss"] == pytest.approx(-np.mean(np.log(p_true)))
    expected = {  # class: (precision, recall, support), by hand from the matrix
        "a": (2 / 3, 2 / 3, 3), "b": (1 / 2, 1 / 2, 2), "c": (1 / 2, 1, 1), "d": (0, 0, 1)}
    for row in r["per_class"]:
        precision, recall, support = expected[row["class"]]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision, recall, f1, support)), row["class"]
    text = format_report(r)
    assert "accuracy: 57.14%  (3 errors)" in text and "confusion matrix" in text


def test_loss_clips_like_keras():
    """A confident mistake costs -log(1e-7), not infinity (Keras clips probabilities to [1e-7, 1-1e-7])."""
    r = metrics_from_probs(np.array([[1.0, 0.0]]), np.array([1]), ["0", "1"])
    assert r["loss"] == pytest.approx(-np.log(1e-7)) and r["accuracy"] == 0


def test_evaluate_torch_matches_the_numpy_metrics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    x = torch.randint(0, 256, (2500, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (2500,))
    got = evaluate_torch(net, x, y, torch.device("cpu"), batch_size=1000)
    with torch.no_grad():
        probs = net(x.float() / 255).softmax(1).double().numpy()
    ref = metrics_from_probs(probs, y.numpy(), [str(i) for i in range(10)])
    assert got["accuracy"] == ref["accuracy"]
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert net.training  # left as it was found
