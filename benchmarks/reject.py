"""How often a model accepts what is not a digit, and rejects what is: the reject benchmark (issue 14).

    python benchmarks/reject.py MODEL [--n 1000] [--photos 2000] [--calibrate-on-val] [--json out.json]

Every input walks the whole road: prepare() (which may already say "empty" or "several_digits"), the
model, then the abstention threshold (trust.status_for). Negatives come from the benchmark split of
digitlab.negatives, made from sources training never uses (Liberation fonts, random-walk scribbles,
salt-and-pepper/Gaussian noise, MNIST test digits for the composites, Fashion-MNIST's test split).

Per kind it prints the false-accept rate (status "digit" on the whole road), and AUROC and FPR@95%TPR of
each score on the prepared images against the MNIST test digits (the score alone, as the literature reports
it; higher AUROC and lower FPR are better). Digits: accuracy and false-reject rate on the 10,000 MNIST test
digits as they are, and on test digits rendered as photos (dark ink on uneven, noisy paper, 4x larger).

Calibration: the model file's own (metadata "calibration"), else trust.DEFAULT_CALIBRATION; with
--calibrate-on-val, both scores are calibrated on the model's validation split (the last val_split of the
MNIST training set, held out from its training) at --target-frr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

from digitlab import negatives, trust
from digitlab.data import load_mnist
from digitlab.model import softmax
from digitlab.modelfile import load
from digitlab.prepare import prepare


def as_photo(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An MNIST digit as a phone photo of paper: 4x larger, dark ink on light paper, uneven light, sensor
    noise, slight blur. uint8 (28, 28) -> uint8 (112, 112)."""
    import cv2

    big = cv2.resize(digit.astype(np.float32) / 255, (112, 112), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    paper, ink = rng.uniform(160, 235), rng.uniform(20, 90)
    ys, xs = np.mgrid[0:112, 0:112].astype(np.float32) / 112
    light = rng.uniform(-25, 25) * xs + rng.uniform(-25, 25) * ys
    g = paper + light - (paper - ink) * big + rng.normal(0, 3, big.shape)
    return np.clip(cv2.GaussianBlur(g.astype(np.float32), (0, 0), 0.8), 0, 255).round().astype(np.uint8)


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve of "higher = positive" scores: P(pos > neg) + P(pos = neg) / 2 over all
    pairs (the Mann-Whitney statistic), counted with a sorted copy of the positives."""
    p = np.sort(np.asarray(pos, np.float64))
    n = np.asarray(neg, np.float64)
    below = np.searchsorted(p, n, side="left")  # positives < each negative
    upto = np.searchsorted(p, n, side="right")  # positives <= each negative
    wins = (len(p) - upto).sum() + 0.5 * (upto - below).sum()
    return float(wins / (len(p) * len(n)))


def fpr_at_95_tpr(pos: np.ndarray, neg: np.ndarray) -> float:
    """The share of negatives scoring at or above the threshold that keeps 95% of the positives."""
    return float((neg >= np.quantile(pos, 0.05, method="lower")).mean())


def road(model, pictures: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """prepare() each picture, then the model: the prepared statuses (N,) and logits (N, C)."""
    prepared = [prepare(p) for p in pictures]
    images = np.stack([p.image for p in prepared]) if prepared else np.zeros((0, 28, 28), np.uint8)
    return np.array([p.status for p in prepared]), trust.logits(model, images)


def scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    return {m: trust.digit_score(logits, m, logits=True) for m in trust.METHODS}


def calibrations(model, args) -> dict[str, dict]:
    """The calibration(s) to apply: the file's or the default; or each method's on the validation split."""
    if not args.calibrate_on_val:
        cal = trust.calibration_of(model)
        return {cal["method"]: cal}
    training = model.metadata.get("training", {})
    split = float(training.get("val_split") or 0)
    if not split:
        raise SystemExit(f"{args.model}: trained without a validation split; --calibrate-on-val needs one")
    train = load_mnist(args.data_dir).train_images
    n_val = int(len(train) * split)
    logits = trust.logits(model, train[len(train) - n_val:])
    return {m: trust.calibration_record(m, trust.calibrate(s, args.target_frr), args.target_frr,
                                        f"{Path(args.model).name}: {n_val} validation digits")
            for m, s in scores(logits).items()}


def overhead_us(logits: np.ndarray, cal: dict) -> float:
    """Microseconds that status_for adds to one in-process prediction (one image at a time)."""
    probs = softmax(logits[:2000]).astype(np.float32)
    is_logits = cal["method"] == "energy"
    rows = logits[:2000] if is_logits else probs
    t = time.perf_counter()
    for row in rows:
        trust.status_for("digit", row, cal, logits=is_logits)
    return (time.perf_counter() - t) / len(rows) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=1000, help="pictures per synthetic kind (default 1000)")
    ap.add_argument("--photos", type=int, default=2000, help="MNIST test digits rendered as photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("DIGITLAB_DATA_DIR"))
    ap.add_argument("--calibrate-on-val", action="store_true")
    ap.add_argument("--target-frr", type=float, default=0.01)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = load(args.model)
    cals = calibrations(model, args)
    data = load_mnist(args.data_dir)
    test_logits = trust.logits(model, data.test_images)
    pos = scores(test_logits)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(data.test_images), size=min(args.photos, len(data.test_images)), replace=False)
    photo_status, photo_logits = road(model, [as_photo(d, rng) for d in data.test_images[idx]])

    results: dict = {"model": str(args.model), "machine": machine_line("onnxruntime"), "calibrations": cals,
                     "kinds": {}, "digits": {}}
    for name, status, logits, labels in (("mnist test", np.full(len(test_logits), "digit"), test_logits,
                                          data.test_labels),
                                         ("photos", photo_status, photo_logits, data.test_labels[idx])):
        row = {"n": len(labels), "accuracy": float((logits.argmax(1) == labels).mean())}
        for m, cal in cals.items():
            ok = (status == "digit") & (scores(logits)[m] >= cal["threshold"])
            row[f"false_reject_{m}"] = float(1 - ok.mean())
        results["digits"][name] = row
    for kind in negatives.KINDS:
        status, logits = road(model, negatives.pictures(kind, args.n, args.seed, "benchmark", args.data_dir))
        s = scores(logits)
        row = {"n": len(status), "prepared_as_digit": float((status == "digit").mean())}
        for m in trust.METHODS:
            row[f"auroc_{m}"] = auroc(pos[m], s[m])
            row[f"fpr95_{m}"] = fpr_at_95_tpr(pos[m], s[m])
        for m, cal in cals.items():
            row[f"false_accept_{m}"] = float(((status == "digit") & (s[m] >= cal["threshold"])).mean())
        results["kinds"][kind] = row
    results["status_for_us_per_image"] = {m: overhead_us(test_logits, c) for m, c in cals.items()}
    results["seconds"] = time.perf_counter() - t0
    print_report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def print_report(r: dict) -> None:
    methods = list(r["calibrations"])
    for m, cal in r["calibrations"].items():
        print(f"{m}: accept score >= {cal['threshold']:.4g} (target false rejects {cal['target_frr']:.1%}; "
              f"{cal['source']})")
    head = "| kind | n | prepared as digit | " + " | ".join(f"false accepts ({m})" for m in methods)
    head += " | " + " | ".join(f"AUROC {m} | FPR@95%TPR {m}" for m in trust.METHODS) + " |"
    print("\n" + head + "\n|" + "---|" * head.count(" | ") + "---|")
    for kind, row in r["kinds"].items():
        cells = [kind, str(row["n"]), f"{row['prepared_as_digit']:.1%}"]
        cells += [f"{row[f'false_accept_{m}']:.1%}" for m in methods]
        cells += [f"{row[f'{k}_{m}']:.4f}" if k == "auroc" else f"{row[f'{k}_{m}']:.1%}"
                  for m in trust.METHODS for k in ("auroc", "fpr95")]
        print("| " + " | ".join(cells) + " |")
    print()
    for name, row in r["digits"].items():
        rejects = ", ".join(f"false rejects ({m}) {row[f'false_reject_{m}']:.2%}" for m in methods)
        print(f"digits, {name} ({row['n']}): accuracy {row['accuracy']:.2%}, {rejects}")
    print("status_for: " + ", ".join(f"{m} {us:.1f} us per image" for m, us in r["status_for_us_per_image"].items()))
    print(f"{r['machine']}; {r['seconds']:.0f} s")


if __name__ == "__main__":
    main()
