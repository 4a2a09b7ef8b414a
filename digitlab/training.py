"""Training: one plain loop, visible from data to optimizer step.

Everything random is derived from (seed, epoch, step), so the same --seed on the same machine gives
the same weights, and a run stopped by Ctrl-C or SIGTERM resumes from its checkpoint to the very
same result. Under torchrun (WORLD_SIZE > 1) the same loop runs data-parallel with DDP: every rank
draws the same global permutation and takes its own slice of each global batch.

`train` reads top-down: settings, output check, processes, data, model, the loop, save, test. A
checkpoint is written after every epoch (the last one too) and at a stop signal, and the model file
before the test evaluation, so a stop at any point loses at most the epoch under way, and a resumed
run never redoes a finished epoch.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from digitlab import trust
from digitlab._io import atomic_write_bytes
from digitlab.augment import augment_batch
from digitlab.checkpoint import Checkpoint, CheckpointError, checkpoint_path, read_checkpoint, write_checkpoint
from digitlab.config import TrainConfig, check_output, config_from_recipe, lr_at
from digitlab.data import load_mnist
from digitlab.errors import DigitlabError
from digitlab.evaluate import evaluate_torch
from digitlab.hardware import choose_precision
from digitlab.model import ARCHITECTURES, build_torch, load_weights
from digitlab.modelfile import DigitModel, save
from digitlab.negatives import OE_WEIGHT, negative_batch, oe_loss
from digitlab.optim import make_optimizer

DEFAULT_OUT = TrainConfig.out  # the dataclass keeps each field's default as a class attribute
TEST_CHUNK = 1000  # test images evaluated between two looks at the stop flag
# Negatives (outlier exposure) are drawn from a pool of at most this many, built once per process:
# 20,000 took 15 s on one idle core (64-112 s with the machine shared); a run of `fast` draws 27,000-30,000.
NEGATIVE_POOL = 20000
# Calibration at the end of training (digitlab.trust): the threshold whose false-reject rate on unseen
# digits is at most 1% with 99% confidence (an exact binomial bound on the validation digits: 0.70% of
# 6,000). The plain quantile lets the rate on other digits scatter around its target: on 3,000
# validation digits calibrated on the other 3,000, 0.8% exceeded 1% in 21% of random splits, the 99%
# bound in 2% (fast recipe with negatives); 0.8% of the validation split gave 1.13% on MNIST's test
# digits, the bound 0.96% (benchmarks/reject.py). The score: energy without negatives (its false
# accepts were 1.5-10x lower than max-softmax's at the same false rejects); max-softmax with them
# (outlier exposure trains the softmax itself: equal or better on every kind but letters and symbols
# (+-0.2 points), and half energy's false rejects on photos) - benchmarks/results/reject-*.json.
CALIBRATION_TARGET_FRR = 0.01
CALIBRATION_CONFIDENCE = 0.99
CALIBRATION_IMAGES = 5000  # training digits calibrated on when there is no validation split


class TrainingInterrupted(DigitlabError):
    """A stop signal (or stop_after_steps) ended the run early; `checkpoint` holds what resumes it.
    The CLI exits with `exit_code` (130, as for Ctrl-C)."""

    exit_code = 130

    def __init__(self, message: str, checkpoint: Path):
        super().__init__(message)
        self.checkpoint = checkpoint


def history_path(out: str | Path) -> Path:
    """Where a run writing model file `out` writes its history: NAME.history.json beside it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".history.json")


@dataclass
class _Run:
    """How this process trains, fixed once set up."""

    config: TrainConfig
    world: int  # processes (torchrun's WORLD_SIZE)
    rank: int
    device: torch.device
    precision: str  # "fp32" or "bf16" (autocast)
    ckpt: Path

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, *parts: Any) -> None:
        if self.main and not self.config.quiet:
            print(*parts, flush=True)


@dataclass
class _Data:
    """uint8 images (N, 1, 28, 28) and int64 labels; the training split on the training device."""

    name: str
    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class _State:
    """Where the run is: what a checkpoint records."""

    steps_per_epoch: int
    epoch: int = 0  # epochs done
    step: int = 0  # steps done in the epoch under way
    history: dict[str, list[float]] = field(default_factory=dict)
    partial: tuple[float, int, int] = (0.0, 0, 0)  # loss sum, correct, seen in the epoch under way
    steps_done: int = 0  # steps this process ran (stop_after_steps counts these)
    checkpoint: Path | None = None  # a file that holds exactly this state, if any


def train(config: TrainConfig | None = None, **overrides: Any) -> DigitModel:
    """Train per config (or a recipe's settings with overrides: `train(recipe="fast", epochs=1)`);
    write the model file `out`, its history (NAME.history.json) and, until the run completes, a
    checkpoint (NAME.ckpt.safetensors). Returns the trained DigitModel.

    Raises DigitlabError for bad settings, an output that exists (without overwrite) or cannot be
    written, missing or corrupt data or checkpoint; TrainingInterrupted on SIGINT/SIGTERM (or after
    stop_after_steps), once the checkpoint is saved."""
    # Settings: a recipe with overrides, or on resume the interrupted run's own.
    config, resumed = _settings(config, overrides)
    # The output: refused before any time is spent if it exists or cannot be written.
    # A resumed run may replace its own output only: the file its checkpoint sits beside. The checkpoint's
    # recorded `out` alone proves nothing (a checkpoint moved, shared or edited may name any file).
    check_output(config, resuming_into=resumed is not None and _same_file(checkpoint_path(config.out), config.resume))
    # Processes, device and precision.
    run = _start(config)
    # Data: uint8 tensors, shared, never copied per epoch; batches are converted as they are cut.
    data = _load_data(config, run.device)
    # Model, optimizer and position, from the checkpoint when resuming.
    net, model, optimizer, state = _build(run, data, resumed)
    # Negatives: their pool is built once, here, so the first epoch's time is the training's own.
    _negative_pool(run, state)
    with _StopFlag() as stop:
        # The loop: a checkpoint after each epoch, and between two steps when a stop comes.
        while state.epoch < config.epochs:
            _train_epoch(run, data, net, model, optimizer, state, stop)
        # Save the model, then evaluate it on the test set and save the figures with it.
        return _finish(run, data, net, state, stop)


def _settings(config: TrainConfig | None, overrides: dict[str, Any]) -> tuple[TrainConfig, Checkpoint | None]:
    if config is None:
        config = config_from_recipe(overrides.pop("recipe", "seed"), **overrides)
    elif overrides:
        unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise DigitlabError(f"unknown training settings: {', '.join(sorted(unknown))}")
        config = replace(config, **overrides)
    config.validate()
    if not config.resume:
        return config, None
    resumed = read_checkpoint(config.resume)
    # Only where the output goes and how the run talks may change on resume; the rest is the run's own.
    config = replace(resumed.config, resume=config.resume, overwrite=config.overwrite, quiet=config.quiet,
                     out=config.out if config.out != DEFAULT_OUT else resumed.config.out,
                     stop_after_steps=config.stop_after_steps)
    config.validate()
    return config, resumed


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _start(config: TrainConfig) -> _Run:
    """Join the process group under torchrun, pick the device, the threads and the precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if config.batch_size % world:
        raise DigitlabError(f"batch_size: {config.batch_size} is not divisible by the {world} processes")
    device = _pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.threads:
        torch.set_num_threads(config.threads)
    precision, why = choose_precision(config.precision, device.type)
    run = _Run(config, world, rank, device, precision, checkpoint_path(config.out))
    run.say(f"Training on {device.type} in {precision} ({why})")
    return run


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DigitlabError("device: cuda requested, but PyTorch sees no CUDA GPU on this machine")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def _load_data(config: TrainConfig, device: torch.device) -> _Data:
    data = load_mnist(config.data_dir, config.dataset)
    x_all = torch.from_numpy(data.train_images).unsqueeze(1)
    y_all = torch.from_numpy(data.train_labels.astype(np.int64))
    if config.limit:
        x_all, y_all = x_all[: config.limit], y_all[: config.limit]
    n_train = len(x_all) - int(len(x_all) * config.val_split)  # the validation split is the end, as Keras's
    n_test = config.test_limit or len(data.test_images)
    return _Data(data.name, list(data.classes), x_all[:n_train].to(device), y_all[:n_train].to(device),
                 x_all[n_train:], y_all[n_train:], torch.from_numpy(data.test_images[:n_test]).unsqueeze(1),
                 torch.from_numpy(data.test_labels[:n_test].astype(np.int64)))


def _build(run: _Run, data: _Data, resumed: Checkpoint | None):
    """The network (and its DDP wrapper), the optimizer and the run's position."""
    cfg = run.config
    torch.manual_seed(cfg.seed)
    # channels-last: oneDNN's convolutions and max-pooling are much faster in NHWC on CPU (23 vs 34 ms
    # per step of 64 here); the batches are converted as they are cut.
    net = build_torch(ARCHITECTURES[cfg.arch]).to(run.device, memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(net) if run.world > 1 else net
    optimizer = make_optimizer(cfg, net.parameters())
    state = _State(steps_per_epoch=math.ceil(len(data.x_train) / cfg.batch_size))
    if resumed is None:
        return net, model, optimizer, state
    if resumed.steps_per_epoch != state.steps_per_epoch:
        raise CheckpointError(f"{cfg.resume}: steps_per_epoch: {resumed.steps_per_epoch}, but the data gives "
                              f"{state.steps_per_epoch} (another dataset, or other files?)")
    load_weights(net, resumed.model)
    optimizer.load_state_dict(resumed.optimizer)
    torch.set_rng_state(resumed.rng)
    state = replace(state, epoch=resumed.epoch, step=resumed.step, history=resumed.history,
                    partial=resumed.partial, checkpoint=Path(cfg.resume))
    where = f"epoch {state.epoch + 1}, step {state.step}" if state.epoch < cfg.epochs else \
        f"all {cfg.epochs} epochs done, to save and test"
    run.say(f"Resuming from {cfg.resume}: {where}")
    return net, model, optimizer, state


def _negative_pool(run: _Run, state: _State) -> None:
    cfg = run.config
    if cfg.negatives and state.epoch < cfg.epochs:
        t0, size = time.perf_counter(), negative_pool_size(cfg, state.steps_per_epoch)
        negative_batch(0, 1, cfg.data_dir, pool_size=size)
        run.say(f"Negatives: a pool of {size:,} non-digits in {time.perf_counter() - t0:.1f} s")


def _train_epoch(run: _Run, data: _Data, net, model, optimizer, state: _State, stop: _StopFlag) -> None:
    """The rest of epoch state.epoch, from step state.step; then its figures and a checkpoint."""
    cfg, epoch = run.config, state.epoch
    model.train()
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(
        _seed_for(cfg.seed, epoch))).to(run.device)
    loss_sum, correct, seen = state.partial
    run.say(f"Epoch {epoch + 1}/{cfg.epochs}")
    bar = _Progress(state.steps_per_epoch, state.step, enabled=run.main and not cfg.quiet)
    t0 = time.perf_counter()
    try:
        for step in range(state.step, state.steps_per_epoch):
            if _stop_requested(run, stop, state):
                state.step, state.partial, state.checkpoint = step, (loss_sum, correct, seen), None
                _interrupt(run, net, optimizer, state, f"interrupted in epoch {epoch + 1}, after step {step}")
            loss, right, n = _train_step(run, data, model, optimizer, perm, epoch, step, state.steps_per_epoch)
            loss_sum += loss * n
            correct += right
            seen += n
            state.steps_done += 1
            bar.update(loss_sum / seen, correct / seen)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if run.world > 1:
        loss_sum, correct, seen = _all_reduce_sums(run.device, loss_sum, correct, seen)
    record = {"loss": loss_sum / seen, "accuracy": correct / seen, "seconds": seconds}
    if len(data.x_val):
        val = evaluate_torch(net, data.x_val, data.y_val, run.device)
        record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
    for k, v in record.items():
        state.history.setdefault(k, []).append(v)
    run.say(_keras_line(state.steps_per_epoch, record))
    state.epoch, state.step, state.partial = epoch + 1, 0, (0.0, 0, 0)
    # A checkpoint per epoch, the last one too: a crash loses at most one epoch, and a stop during the
    # save or the test evaluation resumes without redoing any.
    _save_checkpoint(run, net, optimizer, state)
    if _stop_requested(run, stop, state):
        _interrupt(run, net, optimizer, state, f"interrupted after epoch {epoch + 1} of {cfg.epochs}")


def _train_step(run: _Run, data: _Data, model, optimizer, perm: torch.Tensor, epoch: int, step: int,
                steps_per_epoch: int) -> tuple[float, int, int]:
    """One optimizer step on batch `step` of the epoch's permutation: (mean loss, correct, images)."""
    cfg = run.config
    idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
    if run.world > 1:
        idx = idx.tensor_split(run.world)[run.rank]
    xb = data.x_train[idx].float().div_(255.0)
    yb = data.y_train[idx]
    # Outlier exposure: negatives join the digits before augmentation and in the same forward pass, so
    # batch-norm statistics see both (Hendrycks et al. 2019). Drawn by (seed, epoch, step, rank)
    # from a pool built once per process: a resumed run draws the very same ones.
    n_neg = round(cfg.negatives * len(yb))
    if n_neg:
        xn = negative_batch(_seed_for(cfg.seed, epoch, step, 1 + run.rank), n_neg, cfg.data_dir,
                            pool_size=negative_pool_size(cfg, steps_per_epoch))
        xb = torch.cat([xb, torch.from_numpy(xn).to(xb.device).unsqueeze(1).float().div_(255.0)])
    xb = xb.contiguous(memory_format=torch.channels_last)
    if cfg.augment:
        xb = augment_batch(xb, torch.Generator().manual_seed(_seed_for(cfg.seed, epoch, step)), cfg.elastic)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, epoch * steps_per_epoch + step, steps_per_epoch * cfg.epochs)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16"):
        logits = model(xb).float()
        digits = logits[:len(yb)]
        loss = F.cross_entropy(digits, yb, label_smoothing=cfg.label_smoothing)
        if n_neg:
            loss = loss + OE_WEIGHT * oe_loss(logits[len(yb):])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), int((digits.argmax(1) == yb).sum()), len(yb)


def negative_pool_size(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Images in the pool the run's negatives are drawn from (with replacement): the draws the run makes,
    at most NEGATIVE_POOL. A short run builds a small pool (~0.7 ms per image on one core)."""
    draws = round(cfg.negatives * cfg.batch_size) * steps_per_epoch * cfg.epochs
    return max(1, min(NEGATIVE_POOL, draws))


def _stop_requested(run: _Run, stop: _StopFlag, state: _State) -> bool:
    limit = run.config.stop_after_steps
    # _should_stop first, always: under DDP it is a collective every rank must join.
    return _should_stop(stop.set, run) or (limit is not None and state.steps_done >= limit)


def _should_stop(flag: bool, run: _Run) -> bool:
    """One rank's stop is every rank's stop: otherwise the others wait forever in all-reduce."""
    if run.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=run.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _all_reduce_sums(device: torch.device, *values: float) -> tuple[float, ...]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return tuple(t.tolist())


def _save_checkpoint(run: _Run, net, optimizer, state: _State) -> None:
    """Write the checkpoint (rank 0). A failed write is reported, not fatal: the run goes on, and
    state.checkpoint says whether a file holds the current state."""
    state.checkpoint = None
    if not run.main:
        return
    ckpt = Checkpoint(run.config, state.epoch, state.step, state.steps_per_epoch, state.history, state.partial,
                      net.state_dict(), optimizer.state_dict(), torch.get_rng_state())
    try:
        state.checkpoint = write_checkpoint(run.ckpt, ckpt)
    except OSError as e:
        print(f"digitlab: warning: could not write the checkpoint {run.ckpt} ({e.strerror or e}); "
              f"training goes on", file=sys.stderr, flush=True)


def _interrupt(run: _Run, net, optimizer, state: _State, message: str) -> NoReturn:
    """Checkpoint the current state (if not done yet) and end the run with TrainingInterrupted."""
    if state.checkpoint is None:
        _save_checkpoint(run, net, optimizer, state)
    if run.main and state.checkpoint is None:
        raise DigitlabError(f"{message}, and the checkpoint could not be written to {run.ckpt}: the run is lost")
    where = state.checkpoint or run.ckpt
    raise TrainingInterrupted(f"{message}; checkpoint saved to {where}\nresume with: digitlab train --resume "
                              f"{where}", where)


def _finish(run: _Run, data: _Data, net, state: _State, stop: _StopFlag) -> DigitModel:
    """Save the model, evaluate it on the test set, save it again with the test figures and the history,
    and remove the checkpoint. A stop during the evaluation leaves the model saved (without test figures)
    and the checkpoint, which resumes straight to the evaluation."""
    cfg = run.config
    weights = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    meta = _model_metadata(run, data, state.history)
    meta["calibration"] = calibration(run.config, net, data, run.device)
    run.say(f"Calibrated: accept {meta['calibration']['method']} >= {meta['calibration']['threshold']:.4g} "
            f"(on {meta['calibration']['source']})")
    _save_model(run, state, weights, meta)
    test = _test_metrics(run, net, data, stop)
    if test is None:
        where = state.checkpoint or run.ckpt
        raise TrainingInterrupted(f"stopped during the test evaluation; the model is saved to {cfg.out} (without "
                                  f"test figures)\nadd them with: digitlab train --resume {where}", where)
    part = f" (on the first {test['images']:,} test images)" if cfg.test_limit else ""
    run.say(f"test_loss: {test['loss']:.4f} - test_accuracy: {test['accuracy']:.4f}{part}")
    meta["test_metrics"] = test
    _save_model(run, state, weights, meta)
    if run.main:
        history = json.dumps({"config": asdict(cfg), "history": state.history, "test": test}, indent=2)
        try:
            atomic_write_bytes(history_path(cfg.out), history.encode())
        except OSError as e:
            print(f"digitlab: warning: could not write {history_path(cfg.out)} ({e.strerror or e}); the model "
                  f"file holds the same history", file=sys.stderr, flush=True)
        run.ckpt.unlink(missing_ok=True)
    run.say(f"Saved {cfg.out} (history: {history_path(cfg.out)})")
    if run.world > 1:
        dist.barrier()
    return DigitModel(ARCHITECTURES[cfg.arch], weights, meta)


def calibration(cfg: TrainConfig, net, data: _Data, device: torch.device) -> dict[str, Any]:
    """The abstention threshold for the trained net (digitlab.trust): at most CALIBRATION_TARGET_FRR false
    rejects with CALIBRATION_CONFIDENCE (trust.calibrate) on digits it did not train on (the validation
    split), or, without one, on the last CALIBRATION_IMAGES training digits (which it did train on: it then
    rejects more unseen digits; the record's source says which). A trust.calibration_record for the model
    file's "calibration"."""
    if len(data.x_val):
        x = data.x_val
        source = f"{len(x)} validation digits held out from training (val_split {cfg.val_split:g})"
    else:
        x = data.x_train[-CALIBRATION_IMAGES:]
        source = f"the last {len(x)} training digits (trained on; no validation split)"
    method = "msp" if cfg.negatives else "energy"
    was_training = net.training
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(x[i:i + TEST_CHUNK].to(device).float().div_(255.0)).float().cpu()
                            for i in range(0, len(x), TEST_CHUNK)]).numpy()
    net.train(was_training)
    score = trust.digit_score(logits, method, logits=True)
    threshold = trust.calibrate(score, CALIBRATION_TARGET_FRR, confidence=CALIBRATION_CONFIDENCE)
    return trust.calibration_record(method, threshold, CALIBRATION_TARGET_FRR,
                                    f"{source}; at most {CALIBRATION_TARGET_FRR:.0%} false rejects on unseen digits "
                                    f"with {CALIBRATION_CONFIDENCE:.0%} confidence")


def _model_metadata(run: _Run, data: _Data, history: dict[str, list[float]]) -> dict[str, Any]:
    cfg = run.config
    # "precision" and "device" record what was used ("auto" resolved): still valid TrainConfig values.
    training = {**asdict(cfg), "precision": run.precision, "device": run.device.type, "world_size": run.world,
                "train_images": len(data.x_train)}
    return {"architecture": cfg.arch, "arch_config": ARCHITECTURES[cfg.arch].to_dict(), "dataset": data.name,
            "classes": data.classes, "training": training, "history": history}


def _save_model(run: _Run, state: _State, weights: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the model file (rank 0). Raises DigitlabError if it cannot, saying where the weights are kept."""
    if not run.main:
        return
    try:
        save(run.config.out, weights, meta)
    except OSError as e:
        kept = (f"the trained weights are kept in the checkpoint {state.checkpoint}; once the folder can be "
                f"written, save them with: digitlab train --resume {state.checkpoint}") if state.checkpoint \
            else "the checkpoint could not be written either: the trained weights are lost"
        raise DigitlabError(f"out: could not write {run.config.out} ({e.strerror or e}); {kept}") from None


def _test_metrics(run: _Run, net, data: _Data, stop: _StopFlag) -> dict[str, float] | None:
    """Test loss and accuracy, in chunks with a look at the stop flag between them; None if stopped."""
    loss_sum, correct, n = 0.0, 0, len(data.x_test)
    if _should_stop(stop.set, run):
        return None
    for i in range(0, n, TEST_CHUNK):
        x, y = data.x_test[i:i + TEST_CHUNK], data.y_test[i:i + TEST_CHUNK]
        m = evaluate_torch(net, x, y, run.device)
        loss_sum += m["loss"] * len(x)
        correct += round(m["accuracy"] * len(x))
        if _should_stop(stop.set, run):  # after each chunk, the last one too: a stop is never ignored
            return None
    return {"loss": loss_sum / n, "accuracy": correct / n, "images": n}


def _seed_for(*parts: int) -> int:
    """A stable 63-bit seed for (seed, epoch, step...): all randomness is a function of position (FNV-1a)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def _keras_line(steps: int, r: dict[str, float]) -> str:
    """An epoch's summary as Keras prints it: `469/469 - 5s 11ms/step - loss: ... - accuracy: ...`."""
    parts = [f"{steps}/{steps}", f"{r['seconds']:.0f}s {1000 * r['seconds'] / steps:.0f}ms/step",
             f"loss: {r['loss']:.4f}", f"accuracy: {r['accuracy']:.4f}"]
    if "val_loss" in r:
        parts += [f"val_loss: {r['val_loss']:.4f}", f"val_accuracy: {r['val_accuracy']:.4f}"]
    return " - ".join(parts)


class _StopFlag:
    """Set by SIGINT/SIGTERM from `with` to the end of the run; the loop looks at it between batches
    (and the test evaluation between chunks), so a stop never splits a step."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.set = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class _Progress:
    """A live per-epoch bar (rich) with running loss and accuracy; silent when not on a terminal."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console  # only on a terminal: rich costs 0.1 s to import
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(MofNCompleteColumn(), BarColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[stats]}"), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("train", total=total, completed=done, stats="")
            self.bar.start()
            self.last = 0.0

    def update(self, loss: float, acc: float) -> None:
        if self.bar is not None:
            now = time.perf_counter()
            self.bar.advance(self.task)
            if now - self.last > 0.1:  # redraw text at most 10x/s: formatting is not free
                self.bar.update(self.task, stats=f"loss: {loss:.4f} - accuracy: {acc:.4f}")
                self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
