"""GPU figures for the README: seconds per epoch and time to 99% with `--device cuda` (bf16 autocast).

    python benchmarks/gpu.py                 # on a machine with a CUDA GPU; needs $DIGITLAB_DATA_DIR

Trains the `seed` and `fast` recipes on the GPU (seed 0), prints one markdown row each, and writes the
figures to benchmarks/results/gpu.json. Takes about a minute on a current GPU; exits with a message
(status 1) where PyTorch sees no GPU.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from digitlab.train import config_from_recipe, train


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py: PyTorch sees no CUDA GPU on this machine")
    gpu = torch.cuda.get_device_name(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in ("seed", "fast"):
            cfg = config_from_recipe(recipe, device="cuda", quiet=True, out=str(Path(tmp) / f"{recipe}.safetensors"))
            t0 = time.perf_counter()
            model = train(cfg)
            total = time.perf_counter() - t0
            secs = model.metadata["history"]["seconds"]
            rows.append({"recipe": recipe, "gpu": gpu, "epochs": len(secs),
                         "seconds_per_epoch": statistics.mean(secs), "train_seconds": sum(secs),
                         "first_epoch_seconds": secs[0], "total_seconds": total,
                         "test_accuracy": model.metadata["test_metrics"]["accuracy"]})
    print("| recipe | GPU | s/epoch (first) | training time | test accuracy |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {gpu} | {r['seconds_per_epoch']:.2f} ({r['first_epoch_seconds']:.2f}) | "
              f"{r['train_seconds']:.1f} s | {100 * r['test_accuracy']:.2f}% |")
    out = Path(__file__).parent / "results" / "gpu.json"
    out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
