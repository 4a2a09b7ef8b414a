"""Outlier exposure, measured: a recipe trained with negatives (digitlab.negatives), calibrated and saved.

    python benchmarks/oe_experiment.py --recipe fast --negatives 0.5 --out /tmp/h4/fast-oe.safetensors
    python benchmarks/reject.py /tmp/h4/fast-oe.safetensors --calibrate-on-val

The training loop is digitlab.train's (same batches, learning rates, augmentation and seeds) with the one
change outlier exposure needs (Hendrycks et al. 2019): each step also draws round(negatives * batch)
negative images, runs them through the network in the same forward pass as the digits (so batch-norm
statistics see both), and adds OE_WEIGHT times the cross-entropy from their softmax to the uniform
distribution to the loss. With --negatives 0 it is the recipe as digitlab trains it. A 10% validation
split is held out (--val-split) and the abstention threshold is calibrated on it for a 1% false-reject
rate, then stored in the model file's metadata under "calibration", as digitlab train is to do.
This is the reference for wiring TrainConfig.negatives into digitlab's own loop; it is not a test.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict

import numpy as np


def main() -> None:
    import torch
    import torch.nn.functional as F

    from digitlab import trust
    from digitlab.augment import augment_batch
    from digitlab.config import config_from_recipe, lr_at
    from digitlab.data import load_mnist
    from digitlab.model import ARCHITECTURES, build_torch, numpy_forward
    from digitlab.modelfile import save
    from digitlab.negatives import OE_WEIGHT, negative_batch, oe_loss
    from digitlab.optim import make_optimizer
    from digitlab.training import _seed_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--negatives", type=float, default=0.5, help="negatives per digit in each batch (0 = off)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-split", type=float, default=0.1)
    ap.add_argument("--method", default="msp", choices=trust.METHODS, help="score stored as the calibration")
    ap.add_argument("--data-dir", default=os.environ.get("DIGITLAB_DATA_DIR"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    extra = {"epochs": args.epochs} if args.epochs else {}
    cfg = config_from_recipe(args.recipe, val_split=args.val_split, seed=args.seed, out=args.out,
                             data_dir=args.data_dir, **extra)

    data = load_mnist(cfg.data_dir)
    x_all = torch.from_numpy(data.train_images).unsqueeze(1)
    y_all = torch.from_numpy(data.train_labels.astype(np.int64))
    n_val = int(len(x_all) * cfg.val_split)
    x_train, y_train = x_all[: len(x_all) - n_val], y_all[: len(y_all) - n_val]
    torch.manual_seed(cfg.seed)
    arch = ARCHITECTURES[cfg.arch]
    net = build_torch(arch).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, net.parameters())
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if args.negatives:
        t_pool = time.perf_counter()
        negative_batch(0, 1, cfg.data_dir)  # build the pool once, timed on its own
        print(f"negative pool: {time.perf_counter() - t_pool:.1f} s")
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(_seed_for(cfg.seed, epoch)))
        t0, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb, yb = x_train[idx].float().div_(255.0), y_train[idx]
            n_neg = round(args.negatives * len(yb))
            if n_neg:
                xn = torch.from_numpy(negative_batch(_seed_for(cfg.seed, epoch, step, 1), n_neg, cfg.data_dir))
                xb = torch.cat([xb, xn.unsqueeze(1).float().div_(255.0)])
            xb = xb.contiguous(memory_format=torch.channels_last)
            if cfg.augment:
                xb = augment_batch(xb, torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, step)), cfg.elastic)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch * steps_per_epoch + step, total)
            logits = net(xb)
            loss = F.cross_entropy(logits[: len(yb)], yb, label_smoothing=cfg.label_smoothing)
            if n_neg:
                loss = loss + OE_WEIGHT * oe_loss(logits[len(yb):])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + loss.item() * len(yb), seen + len(yb)
        print(f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / seen:.4f}, {time.perf_counter() - t0:.0f} s")

    weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    test_acc = float((numpy_forward(arch, weights, data.test_images / np.float32(255)).argmax(1)
                      == data.test_labels).mean())
    val_logits = numpy_forward(arch, weights, data.train_images[len(x_all) - n_val:] / np.float32(255))
    score = trust.digit_score(val_logits, args.method, logits=True)
    calibration = trust.calibration_record(args.method, trust.calibrate(score, 0.01), 0.01,
                                           f"{n_val} MNIST validation digits held out from training")
    print(f"test accuracy {test_acc:.4f}; calibration {calibration}")
    save(cfg.out, weights, {
        "architecture": cfg.arch, "arch_config": arch.to_dict(), "dataset": data.name,
        "classes": list(data.classes), "calibration": calibration,
        "training": {**asdict(cfg), "negatives": args.negatives, "train_images": len(x_train)},
        "test_metrics": {"accuracy": test_acc}})


if __name__ == "__main__":
    main()
