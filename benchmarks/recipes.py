"""Accuracy and time of a training recipe over several seeds: the README's recipe table.

    python benchmarks/recipes.py --recipe seed --seeds 0 1 2      # the tutorial's recipe, 3 seeds
    python benchmarks/recipes.py --recipe fast --device cuda       # the GPU figures (recipe-fast-cuda.json)

Prints one line per seed and a markdown row (mean +- std), and with several seeds the test accuracy of
their ensemble (averaged probabilities, as `digitlab evaluate m1 m2 m3`); writes the figures as JSON
into benchmarks/results/. Needs MNIST via --data-dir or $DIGITLAB_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_name, machine_line

from digitlab.config import config_from_recipe
from digitlab.data import load_mnist
from digitlab.errors import DigitlabError
from digitlab.evaluate import evaluate
from digitlab.training import train


def machine(device: str = "cpu") -> str:
    """The table's machine column: the GPU's name, or the CPU model and cores."""
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, help="override the recipe's epochs")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where to train (cuda: the GPU figures, bf16 autocast)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="training precision (auto: bf16 where the CPU has it natively, and on GPUs)")
    ap.add_argument("--keep", metavar="DIR", help="keep the trained models in DIR (e.g. to evaluate an ensemble)")
    args = ap.parse_args()
    print(machine_line(), flush=True)
    runs, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            tmp = args.keep
        for seed in args.seeds:
            extra = {"epochs": args.epochs} if args.epochs else {}
            cfg = config_from_recipe(args.recipe, seed=seed, data_dir=args.data_dir, quiet=True, device=args.device,
                                     precision=args.precision, overwrite=True,
                                     out=str(Path(tmp) / f"{args.recipe}-{seed}.safetensors"), **extra)
            t0 = time.perf_counter()
            model = train(cfg)
            models.append(model)
            total = time.perf_counter() - t0
            secs = model.metadata["history"]["seconds"]
            acc = model.metadata["test_metrics"]["accuracy"]
            device = model.metadata["training"]["device"]  # what "auto" resolved to
            precision = model.metadata["training"]["precision"]  # likewise
            runs.append({"seed": seed, "test_accuracy": acc, "seconds_per_epoch": statistics.mean(secs),
                         "train_seconds": sum(secs), "total_seconds": total})
            print(f"seed {seed}: test accuracy {100 * acc:.2f}%  {statistics.mean(secs):.1f} s/epoch  "
                  f"{sum(secs):.0f} s training ({total:.0f} s with data loading and test)", flush=True)
    ensemble = None
    if len(models) > 1:
        data = load_mnist(args.data_dir)
        ensemble = evaluate(models, data.test_images, data.test_labels)[0]["accuracy"]
        print(f"ensemble of the {len(models)} models: test accuracy {100 * ensemble:.2f}%")
    accs = [100 * r["test_accuracy"] for r in runs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    spe = statistics.mean(r["seconds_per_epoch"] for r in runs)
    print("\n| recipe | seeds | test accuracy (mean ± std) | median | s/epoch | training time | precision | machine |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.recipe} | {len(runs)} | {statistics.mean(accs):.2f} ± {sd:.2f}% | "
          f"{statistics.median(accs):.2f}% | {spe:.1f} | {statistics.mean(r['train_seconds'] for r in runs):.0f} s"
          f" | {precision} | {machine(device)} |")
    # Another device or other epochs than the recipe's must not overwrite the recipe's CPU figures.
    name = (f"recipe-{args.recipe}" + (f"-{args.epochs}ep" if args.epochs else "")
            + ("-cuda" if device == "cuda" else "")
            + ("" if precision == ("bf16" if device == "cuda" else "fp32") else f"-{precision}"))
    out = Path(__file__).parent / "results" / f"{name}.json"
    out.write_text(json.dumps({"recipe": args.recipe, "epochs_override": args.epochs, "machine": machine(device),
                               "machine_line": machine_line(), "precision": precision, "runs": runs,
                               "ensemble_test_accuracy": ensemble}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # e.g. --device cuda where there is no GPU: the message, not a traceback
        raise SystemExit(f"recipes.py: {e}") from None
