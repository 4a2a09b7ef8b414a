"""The tutorial's Keras program and digitlab's default training, side by side on this machine.

    python benchmarks/vs_keras.py --runs 2          # ~12 minutes on 2 cores

Sets up TensorFlow (tensorflow-cpu, in its own virtual environment under ~/.cache/digitlab/bench-tfenv,
once), then runs, alternating, the tutorial's program (its code verbatim, but MNIST read from our IDX
files instead of downloaded) and `digitlab.train` with the defaults (the same recipe). Each run is a
fresh process that reports: seconds per epoch, total training time, test accuracy, batched inference
images/s, single-image latency (median, p95) and peak RSS. Prints a table with digitlab/Keras ratios.
Not part of CI. Needs MNIST via --data-dir or $DIGITLAB_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import machine_line

TF_ENV = Path.home() / ".cache" / "digitlab" / "bench-tfenv"

# Shared by both sides: read MNIST from the IDX files and time inference the same way.
COMMON = r'''
import gzip, json, resource, sys, time
from pathlib import Path
import numpy as np
DATA = Path(sys.argv[1])
def idx(name, offset):
    return np.frombuffer(gzip.decompress((DATA / f"{name}.gz").read_bytes()), np.uint8, offset=offset)
train_images = idx("train-images-idx3-ubyte", 16).reshape(60000, 28, 28)
train_labels = idx("train-labels-idx1-ubyte", 8)
test_images = idx("t10k-images-idx3-ubyte", 16).reshape(10000, 28, 28)
test_labels = idx("t10k-labels-idx1-ubyte", 8)
def timing(predict_batch, predict_one):
    predict_batch(); t = time.perf_counter(); predict_batch(); batch_ips = 10000 / (time.perf_counter() - t)
    lat = []
    for i in range(300):
        t = time.perf_counter(); predict_one(i); lat.append(1000 * (time.perf_counter() - t))
    lat = sorted(lat[20:])
    return batch_ips, lat[len(lat) // 2], lat[int(0.95 * len(lat))]
def report(epochs, total, acc, batch_ips, p50, p95):
    print("RESULT " + json.dumps({"epoch_seconds": epochs, "train_seconds": total, "test_accuracy": acc,
          "batch_images_per_s": batch_ips, "latency_ms_p50": p50, "latency_ms_p95": p95,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
'''

KERAS = COMMON + r'''
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tensorflow.keras import layers, models
from tensorflow.keras.utils import to_categorical
import tensorflow as tf
# --- the tutorial, verbatim (but for where the data comes from) ---
model = models.Sequential()
model.add(layers.Conv2D(32, (3,3), activation='relu', input_shape=(28,28,1)))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3,3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3,3), activation='relu'))
model.add(layers.Flatten())
model.add(layers.Dense(64, activation='relu'))
model.add(layers.Dense(10, activation='softmax'))
train_x = train_images.reshape((60000, 28, 28, 1)).astype('float32') / 255
test_x = test_images.reshape((10000, 28, 28, 1)).astype('float32') / 255
train_y = to_categorical(train_labels)
test_y = to_categorical(test_labels)
model.compile(optimizer='rmsprop', loss='categorical_crossentropy', metrics=['accuracy'])
class Timer(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): times.append(time.perf_counter() - self.t)
times = []
t0 = time.perf_counter()
model.fit(train_x, train_y, epochs=5, batch_size=64, callbacks=[Timer()], verbose=2)
total = time.perf_counter() - t0
test_loss, test_acc = model.evaluate(test_x, test_y, verbose=0)
report(times, total, float(test_acc), *timing(lambda: model.predict(test_x, batch_size=1000, verbose=0),
       lambda i: model.predict(test_x[i:i+1], verbose=0)))
'''

DIGITLAB = COMMON + r'''
import tempfile
import digitlab
with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    model = digitlab.train(out=f"{d}/m.safetensors", data_dir=str(DATA), quiet=True, precision=sys.argv[2])
    total = time.perf_counter() - t0
acc = float((model.predict(test_images).argmax(1) == test_labels).mean())
report(model.metadata["history"]["seconds"], total, acc, *timing(lambda: model.predict(test_images),
       lambda i: model.predict(test_images[i:i+1])))
'''


def ensure_tf() -> Path:
    python = TF_ENV / "bin" / "python"
    if not python.exists():
        print(f"setting up TensorFlow in {TF_ENV} (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TF_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu==2.21.0"], check=True)
    return python


def run(python: str, program: str, data: Path, precision: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(program)
    try:
        proc = subprocess.run([python, f.name, str(data), precision], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{python} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("DIGITLAB_DATA_DIR"))
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="digitlab's training precision (auto: bf16 where the CPU has it natively)")
    ap.add_argument("--report", action="store_true", help="only print the table of the last run's results")
    args = ap.parse_args()
    if args.report:
        print_table(json.loads((Path(__file__).parent / "results" / "vs_keras.json").read_text()))
        return
    if not args.data_dir:
        sys.exit("set --data-dir or $DIGITLAB_DATA_DIR to the MNIST IDX files")
    data = Path(args.data_dir).resolve()
    tf_python = ensure_tf()
    machine = machine_line(load_torch=True)
    print(machine, flush=True)
    results: dict = {"machine": machine, "precision": args.precision, "keras": [], "digitlab": []}
    for r in range(args.runs):  # alternate, so that drifts in machine load hit both sides alike
        for name, python, program in (("keras", str(tf_python), KERAS), ("digitlab", sys.executable, DIGITLAB)):
            res = run(python, program, data, args.precision)
            results[name].append(res)
            print(f"run {r + 1} {name:>8}: {statistics.mean(res['epoch_seconds']):.1f} s/epoch, "
                  f"{100 * res['test_accuracy']:.2f}%", flush=True)

    with open(Path(__file__).parent / "results" / "vs_keras.json", "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)


def print_table(results: dict) -> None:
    def agg(name: str, key: str) -> float:
        vals = [statistics.mean(x[key]) if isinstance(x[key], list) else x[key] for x in results[name]]
        return statistics.mean(vals)

    rows = [("seconds per epoch", "epoch_seconds", "{:.1f}"), ("total training time, s", "train_seconds", "{:.0f}"),
            ("test accuracy, %", "test_accuracy", "{:.2%}"),
            ("batch inference, images/s", "batch_images_per_s", "{:,.0f}"),
            ("single-image latency p50, ms", "latency_ms_p50", "{:.2f}"),
            ("single-image latency p95, ms", "latency_ms_p95", "{:.2f}"), ("peak RSS, MB", "peak_rss_mb", "{:.0f}")]
    print(f"\n{results.get('machine', 'machine: not recorded')}; digitlab precision: "
          f"{results.get('precision', 'fp32')}")
    print(f"| ({len(results['keras'])} runs each, means) | Keras (tutorial) | digitlab | digitlab / Keras |")
    print("|---|---|---|---|")
    for label, key, fmt in rows:
        k, d = agg("keras", key), agg("digitlab", key)
        print(f"| {label} | {fmt.format(k).rstrip('%')} | {fmt.format(d).rstrip('%')} | {d / k:.3g}x |")


if __name__ == "__main__":
    main()
