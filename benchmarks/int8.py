"""int8 against float32 ONNX inference: images/s and test accuracy on the MNIST test set.

    python benchmarks/int8.py MODEL.safetensors [--threads 1 2] [--batch 256 1]

Exports MODEL twice with digitlab.onnx.export_onnx (float32, and int8: onnxruntime static QDQ
quantization, per-channel, calibrated on 512 training images), then times onnxruntime on the 10,000
test images for each thread count and batch size (median of 5 passes, after a warm-up) and prints
the accuracy of both. Prints the machine (CPU model, ISA flags, cores) and the onnxruntime version
with the table. Needs MNIST via $DIGITLAB_DATA_DIR.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from _machine import machine_line

from digitlab.data import load_mnist
from digitlab.errors import DigitlabError
from digitlab.modelfile import load
from digitlab.onnx import export_onnx


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def images_per_second(s: ort.InferenceSession, x: np.ndarray, batch: int, passes: int = 5) -> float:
    n = len(x) if batch > 1 else 2000  # batch 1: 2,000 single-image runs per pass
    for i in range(0, min(n, 1000), batch):
        s.run(None, {"image": x[i:i + batch]})
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        for i in range(0, n, batch):
            s.run(None, {"image": x[i:i + batch]})
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    args = parser.parse_args()
    model = load(args.model)
    data = load_mnist(dataset=model.metadata.get("dataset", "mnist"))
    x = data.test_images[:, None].astype(np.float32) / 255
    with tempfile.TemporaryDirectory() as d:
        paths = {"float32": export_onnx(model, Path(d) / "f.onnx"),
                 "int8": export_onnx(model, Path(d) / "q.onnx", int8=True)}
        print(machine_line("onnxruntime"))
        print(f"model: {args.model} ({model.param_count:,} parameters); files: "
              + ", ".join(f"{k} {p.stat().st_size / 1024:.0f} KB" for k, p in paths.items()))
        accuracy = {}
        for kind, path in paths.items():
            s = session(path, 1)
            probs = np.concatenate([s.run(None, {"image": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])
            accuracy[kind] = (probs.argmax(1) == data.test_labels).mean()
        print(f"test accuracy: float32 {accuracy['float32']:.2%}, int8 {accuracy['int8']:.2%} "
              f"({100 * (accuracy['int8'] - accuracy['float32']):+.2f} points)\n")
        print("| threads | batch | float32 images/s | int8 images/s | int8 speed-up |\n|---|---|---|---|---|")
        for threads in args.threads:
            for batch in args.batch:
                f = images_per_second(session(paths["float32"], threads), x, batch)
                q = images_per_second(session(paths["int8"], threads), x, batch)
                print(f"| {threads} | {batch} | {f:,.0f} | {q:,.0f} | x{q / f:.2f} |", flush=True)


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data, a bad model file: the message, not a traceback
        raise SystemExit(f"int8.py: {e}") from None
