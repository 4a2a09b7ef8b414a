"""Inference speed of a model file, per backend, and the cold start of `digitlab predict`.

    python benchmarks/inference.py MODEL.safetensors [--data-dir DIR]

Batched images/s on the 10,000 test images, single-image in-process latency (median, p95), the
largest difference between backends, and the wall time of `digitlab predict MODEL one.png` in a fresh
process (median of 5). Needs MNIST (--data-dir, else $DIGITLAB_DATA_DIR, else the cache); without it, or
with a bad model file, it ends with digitlab's message, not a traceback.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_line
from PIL import Image

from digitlab.data import load_mnist
from digitlab.errors import DigitlabError
from digitlab.modelfile import load


def bench(model, images: np.ndarray) -> tuple[float, float, float]:
    model.predict(images[:1000])
    t = time.perf_counter()
    model.predict(images)
    ips = len(images) / (time.perf_counter() - t)
    lat = []
    for i in range(1000):
        t = time.perf_counter()
        model.predict(images[i:i + 1])
        lat.append(1000 * (time.perf_counter() - t))
    lat.sort()
    return ips, lat[500], lat[950]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a digitlab model file")
    ap.add_argument("--data-dir", help="MNIST folder (default: $DIGITLAB_DATA_DIR, then the cache)")
    args = ap.parse_args()
    path = args.model
    load(path)  # a bad model file is reported before the test set is read
    data = load_mnist(args.data_dir)
    print(machine_line("onnxruntime"))
    print("| backend | batch images/s | single p50 ms | single p95 ms |\n|---|---|---|---|")
    probs = {}
    for backend in ("onnxruntime", "numpy"):
        model = load(path)
        model.backend = backend
        ips, p50, p95 = bench(model, data.test_images)
        probs[backend] = model.predict(data.test_images)
        print(f"| {backend} | {ips:,.0f} | {p50:.3f} | {p95:.3f} |", flush=True)
    import torch

    net = load(path).to_torch()
    x = torch.from_numpy(data.test_images).unsqueeze(1).float() / 255
    with torch.no_grad():
        net(x[:1000])
        t = time.perf_counter()
        out = torch.cat([net(x[i:i + 1000]) for i in range(0, 10000, 1000)]).softmax(1).numpy()
        ips = 10000 / (time.perf_counter() - t)
    print(f"| torch (eager, for comparison) | {ips:,.0f} | | |")
    diff = max(np.abs(probs["numpy"] - probs["onnxruntime"]).max(), np.abs(probs["numpy"] - out).max())
    print(f"\nlargest probability difference between backends: {diff:.1e}")
    with tempfile.TemporaryDirectory() as d:
        one = Path(d) / "one.png"
        Image.fromarray(255 - data.test_images[0]).resize((200, 200)).save(one)
        walls = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "digitlab", "predict", path, str(one)], check=True,
                           capture_output=True)
            walls.append(time.perf_counter() - t)
    print(f"cold `digitlab predict MODEL one.png`: {statistics.median(walls):.2f} s (median of 5)")


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data, a bad model file: the message, not a traceback
        raise SystemExit(f"inference.py: {e}") from None
