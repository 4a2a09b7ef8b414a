"""Test-set metrics: loss, accuracy, per-class precision/recall/F1 and the confusion matrix.

Several models evaluate as an ensemble: their probabilities are averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from digitlab.modelfile import DigitModel


def metrics_from_probs(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """All the figures `digitlab evaluate` reports, from (N, C) probabilities and (N,) true labels."""
    labels = labels.astype(np.int64)
    n, c = probs.shape
    predicted = probs.argmax(axis=1)
    # Categorical cross-entropy as Keras computes it: probabilities clipped to [1e-7, 1 - 1e-7].
    p_true = np.clip(probs[np.arange(n), labels], 1e-7, 1 - 1e-7)
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = []
    for k in range(c):
        tp = int(confusion[k, k])
        predicted_k, actual_k = int(confusion[:, k].sum()), int(confusion[k].sum())
        precision = tp / predicted_k if predicted_k else 0.0
        recall = tp / actual_k if actual_k else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": classes[k], "precision": precision, "recall": recall, "f1": f1,
                          "support": actual_k})
    return {
        "loss": float(-np.log(p_true).mean()) if n else float("nan"),
        "accuracy": float((predicted == labels).mean()) if n else float("nan"),
        "count": n,
        "errors": int((predicted != labels).sum()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def ensemble_predict(models: Sequence[DigitModel], images: np.ndarray) -> np.ndarray:
    """Averaged probabilities of several models (one model: its own)."""
    probs = models[0].predict(images)
    for m in models[1:]:
        probs += m.predict(images)
    return probs / len(models)


def evaluate(models: DigitModel | Sequence[DigitModel], images: np.ndarray,
             labels: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of a model (or an ensemble) on images (N, 28, 28) uint8 with labels (N,), and the
    (N, classes) probabilities they were computed from."""
    models = [models] if isinstance(models, DigitModel) else list(models)
    probs = ensemble_predict(models, images)
    result = metrics_from_probs(probs, labels, models[0].classes)
    result["models"] = len(models)
    return result, probs


def evaluate_torch(net, x, y, device, batch_size: int = 1000) -> dict[str, float]:
    """Loss and accuracy of a PyTorch module on uint8 (N, 1, 28, 28) images: used during training."""
    import torch
    import torch.nn.functional as F

    was_training = net.training
    net.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device).float().div_(255.0)
            yb = y[i:i + batch_size].to(device)
            logits = net(xb).float()
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    net.train(was_training)
    return {"loss": loss_sum / max(1, len(x)), "accuracy": correct / max(1, len(x))}


def format_report(result: dict[str, Any]) -> str:
    """A readable text report: headline figures, per-class table, confusion matrix."""
    source = result.get("images", "test set")
    lines = [f"{'test images' if source == 'test set' else f'images in {source}'}: {result['count']:,}   "
             f"models: {result.get('models', 1)}",
             f"loss: {result['loss']:.4f}   accuracy: {100 * result['accuracy']:.2f}%  "
             f"({result['errors']} error{'' if result['errors'] == 1 else 's'})", "",
             f"{'class':>12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for row in result["per_class"]:
        lines.append(f"{row['class']:>12} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} "
                     f"{row['support']:8d}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    conf = result["confusion"]
    lines.append("      " + "".join(f"{k:>6}" for k in range(len(conf))))
    for k, row in enumerate(conf):
        lines.append(f"{k:>6}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
