"""Time to 99% on this machine's CPU: the `fast` recipe over several seeds, timed as airbench times its runs.

    python benchmarks/record.py                          # warm-up run, then seeds 0-4: test accuracy, seconds
    python benchmarks/record.py --val                    # the last 10,000 training images held out: validation
                                                         # accuracy, the figure recipes are chosen on
    python benchmarks/record.py --limit 2000 --test-limit 500 --seeds 0   # a dry run (seconds)

Every run is `digitlab.train` itself (the same loop, data handling and optimizer as `digitlab train
--recipe fast`), in one process: a warm-up run first (oneDNN builds its kernels for each new shape on first
use, and the allocator grows its pools; not counted), then one run per seed. The time reported is the
training alone, as airbench reports it: the epochs' loops (each run's history "seconds": batches cut from
the uint8 tensor already in memory, forward, backward, optimizer steps), without reading the files,
building the model, the per-epoch checkpoint, calibration, saving or the test evaluation; the whole
train() call's wall time is printed beside it. Prints the machine (CPU model, ISA, cores, load average),
torch's version and threads, each seed's time and accuracy, and their mean +- std; writes the figures as
JSON into benchmarks/results/ (record-RECIPE.json, record-RECIPE-val.json with --val; not for dry runs).
Needs MNIST via --data-dir or $DIGITLAB_DATA_DIR.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import machine_line

from digitlab.config import RECIPE_NAMES, config_from_recipe
from digitlab.errors import DigitlabError
from digitlab.training import train

VAL_IMAGES = 10_000  # held out from the end of the 60,000 training images with --val (as Keras's split)
TARGET = 0.99


def run_once(args: argparse.Namespace, seed: int, out: Path) -> dict:
    """One `digitlab.train` run of the recipe: its seed, training seconds (the epochs' loops), wall seconds of
    the whole call, and the accuracy on the validation split (--val) or the test set."""
    settings = dict(seed=seed, data_dir=args.data_dir, quiet=True, overwrite=True, out=str(out),
                    threads=args.threads, limit=args.limit, test_limit=args.test_limit)
    if args.val:  # the last VAL_IMAGES of the (limited) training set; no test image is looked at
        n = args.limit or 60_000
        settings.update(val_split=min(VAL_IMAGES, n // 2) / n, test_limit=1)
    t0 = time.perf_counter()
    model = train(config_from_recipe(args.recipe, **settings))
    wall = time.perf_counter() - t0
    history = model.metadata["history"]
    acc = history["val_accuracy"][-1] if args.val else model.metadata["test_metrics"]["accuracy"]
    return {"seed": seed, "train_seconds": sum(history["seconds"]), "wall_seconds": wall, "accuracy": acc,
            "epochs": len(history["seconds"]), "train_images": model.metadata["training"]["train_images"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="fast", choices=RECIPE_NAMES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--val", action="store_true", help=f"hold out the last {VAL_IMAGES:,} training images and report "
                    "accuracy on them (for choosing settings; the test set is not looked at)")
    ap.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's, one per core)")
    ap.add_argument("--data-dir")
    ap.add_argument("--limit", type=int, help="train on the first N training images only (a dry run)")
    ap.add_argument("--test-limit", type=int, help="evaluate on the first N test images only (a dry run)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    cfg = config_from_recipe(args.recipe)
    what = "validation (last 10,000 training images)" if args.val else "test"
    print(f"recipe {args.recipe}: arch {cfg.arch}, {cfg.epochs} epoch(s), batch {cfg.batch_size}, {cfg.optimizer} "
          f"lr {cfg.lr:g} betas ({cfg.beta1:g}, {cfg.beta2:g}) {cfg.schedule}, label smoothing "
          f"{cfg.label_smoothing:g}; torch {torch.__version__}, {torch.get_num_threads()} threads; seeds "
          f"{' '.join(map(str, args.seeds))}; accuracy on {what}", flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "record.safetensors"
        warm = run_once(args, max(args.seeds) + 1, out)  # not counted: kernels built, pools grown
        print(f"warm-up (seed {warm['seed']}, not counted): {warm['train_seconds']:.2f} s", flush=True)
        for seed in args.seeds:
            runs.append(run_once(args, seed, out))
            r = runs[-1]
            print(f"seed {seed}: {r['train_seconds']:.2f} s training ({r['wall_seconds']:.1f} s for the whole "
                  f"train() call) - {what} accuracy {100 * r['accuracy']:.2f}%", flush=True)
    accs = [100 * r["accuracy"] for r in runs]
    secs = [r["train_seconds"] for r in runs]
    sd_acc = statistics.stdev(accs) if len(accs) > 1 else 0.0
    sd_sec = statistics.stdev(secs) if len(secs) > 1 else 0.0
    mean = statistics.mean(accs)
    print(f"{what} accuracy {mean:.2f} ± {sd_acc:.2f}% over {len(runs)} seeds "
          f"({'reaches' if mean >= 100 * TARGET else 'short of'} {100 * TARGET:.0f}%); training "
          f"{statistics.mean(secs):.2f} ± {sd_sec:.2f} s")
    if args.limit or args.test_limit:
        return  # a dry run's figures are not the recipe's
    name = f"record-{args.recipe}" + ("-val" if args.val else "")
    (Path(__file__).parent / "results" / f"{name}.json").write_text(json.dumps(
        {"recipe": args.recipe, "settings": {k: v for k, v in vars(cfg).items() if k != "stop_after_steps"},
         "machine_line": machine_line(), "torch": torch.__version__, "threads": torch.get_num_threads(),
         "accuracy_on": what, "runs": runs}, indent=2))


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # e.g. no MNIST: the message, not a traceback
        raise SystemExit(f"record.py: {e}") from None
