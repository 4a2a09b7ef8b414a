"""Feature-space not-a-digit scores against max softmax, on one model (issue 14: "deep k-NN on features").

    python benchmarks/feature_scores.py MODEL [--n 1000]

Scores, each thresholded at 1% false rejects on the model's validation split (the last val_split of the
MNIST training set; the model must have been trained with --val-split):
- msp: maximum softmax probability (Hendrycks & Gimpel 2017), what digitlab uses;
- mahalanobis: minus the smallest Mahalanobis distance of the penultimate features to a class mean, with
  one covariance shared by the classes (Lee et al., NeurIPS 2018);
- knn: the cosine similarity of the normalised penultimate features to their 10th nearest neighbour among
  a third of the training features (Sun et al., ICML 2022);
- msp&knn: accepted only when both accept.
Prints the false-reject rate on the MNIST test digits and the false-accept rate per kind of benchmark
negative (digitlab.negatives, the benchmark split, through prepare() as benchmarks/reject.py does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

from digitlab import negatives  # noqa: E402
from digitlab.data import load_mnist  # noqa: E402
from digitlab.modelfile import load  # noqa: E402
from digitlab.prepare import prepare  # noqa: E402

KINDS = ("fashion", "letters", "symbols", "scribbles")


def features(body, images: np.ndarray) -> np.ndarray:
    """Penultimate features (N, D) float32 of uint8 images (N, 28, 28)."""
    import torch

    with torch.no_grad():
        return np.concatenate([body(torch.from_numpy(images[i:i + 2000].astype(np.float32) / 255)[:, None]).numpy()
                               for i in range(0, len(images), 2000)])


def scorers(net, train_f: np.ndarray, train_y: np.ndarray) -> dict:
    """Score functions of features (higher: more digit-like), fitted on the training features."""
    import torch

    means = np.stack([train_f[train_y == c].mean(0) for c in range(10)])
    centred = train_f - means[train_y]
    precision = np.linalg.inv(centred.T @ centred / len(centred) + 1e-3 * np.eye(train_f.shape[1]))
    bank = train_f[::3] / np.linalg.norm(train_f[::3], axis=1, keepdims=True).clip(1e-6)

    def msp(f):
        with torch.no_grad():
            return torch.softmax(net[-1](torch.from_numpy(f)), 1).max(1).values.numpy()

    def mahalanobis(f):
        return -np.stack([np.einsum("ij,jk,ik->i", f - m, precision, f - m) for m in means], 1).min(1)

    def knn(f):
        sim = (f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-6)) @ bank.T
        return np.partition(sim, -10, axis=1)[:, -10]

    return {"msp": msp, "mahalanobis": mahalanobis, "knn": knn}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=1000, help="pictures per kind of negative (default 1000)")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    print(machine_line("torch"))
    import torch

    torch.set_num_threads(2)
    model = load(args.model)
    split = float(model.metadata.get("training", {}).get("val_split") or 0)
    if not split:
        raise SystemExit(f"{args.model}: trained without a validation split (--val-split); it is needed here")
    net = model.to_torch()
    body = net[:-1]
    data = load_mnist(args.data_dir)
    n_train = len(data.train_images) - int(len(data.train_images) * split)
    score = scorers(net, features(body, data.train_images[:n_train]), data.train_labels[:n_train])
    val = features(body, data.train_images[n_train:])
    threshold = {k: float(np.quantile(fn(val), 0.01)) for k, fn in score.items()}
    test = features(body, data.test_images)
    print("false rejects, MNIST test:", {k: f"{(fn(test) < threshold[k]).mean():.2%}" for k, fn in score.items()})
    for kind in KINDS:
        prepared = [prepare(p) for p in negatives.pictures(kind, args.n, 0, "benchmark", args.data_dir)]
        is_digit = np.array([p.status == "digit" for p in prepared])
        f = features(body, np.stack([p.image for p in prepared]))
        accepted = {k: is_digit & (fn(f) >= threshold[k]) for k, fn in score.items()}
        accepted["msp&knn"] = accepted["msp"] & accepted["knn"]
        print(f"accepted, {kind}:", {k: f"{a.mean():.1%}" for k, a in accepted.items()}, flush=True)


if __name__ == "__main__":
    main()
