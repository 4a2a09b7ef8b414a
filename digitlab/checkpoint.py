"""Training checkpoints: one safetensors file (weights, optimizer tensors, RNG state) with a JSON document
(settings, position, history) in its header. Never pickle.

A checkpoint is read back only after every field has been checked against what the run's own settings
imply: the position (epoch 0..epochs, step 0..steps_per_epoch-1), the history (one value per epoch
done), the optimizer's groups, and every tensor's name, dtype and shape (from the architecture, before
the tensor data is read, so memory is bounded by the architecture, not by what the file declares).
Anything else is a CheckpointError naming the file and the field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from digitlab._io import atomic_write_bytes
from digitlab.config import TrainConfig, checkpoint_path, config_from_dict  # noqa: F401 (checkpoint_path: re-exported)
from digitlab.errors import DigitlabError
from digitlab.model import ARCHITECTURES, param_shapes
from digitlab.optim import make_optimizer

KIND = "digitlab-checkpoint"
META_KEY = "digitlab_checkpoint"
# A header lists ~100 tensors and a history of a few numbers per epoch: ~20 KB for 150 epochs.
MAX_HEADER_BYTES = 4 << 20
DTYPES = {"F32": 4, "U8": 1}  # safetensors dtype -> bytes per element: all a checkpoint holds


class CheckpointError(DigitlabError):
    """A checkpoint is missing, corrupt, or holds a value that does not fit its own run."""


@dataclass
class Checkpoint:
    """A training run's full state between two steps.

    epoch: epochs completed (0..config.epochs); step: steps done in the epoch under way
    (0..steps_per_epoch-1; 0 once all epochs are done); history: per-epoch figures, `epoch` values each;
    partial: (loss sum, correct, seen) of the epoch under way; model: the state dict; optimizer: the
    optimizer's state dict; rng: torch's CPU generator state (uint8)."""

    config: TrainConfig
    epoch: int
    step: int
    steps_per_epoch: int
    history: dict[str, list[float]]
    partial: tuple[float, int, int]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: torch.Tensor


def write_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ckpt to path atomically (a crash mid-write leaves the previous checkpoint). Raises OSError."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in ckpt.model.items()}
    for pid, state in ckpt.optimizer["state"].items():
        for key, value in state.items():
            # safetensors has no 0-d tensors: scalars (Adam's step) are stored with shape (1,).
            tensors[f"optim/{pid}/{key}"] = value.detach().cpu().reshape(-1 if value.dim() == 0 else value.shape)
    tensors["rng"] = ckpt.rng
    meta = {"kind": KIND, "config": asdict(ckpt.config), "epoch": ckpt.epoch, "step": ckpt.step,
            "steps_per_epoch": ckpt.steps_per_epoch, "history": ckpt.history, "partial": list(ckpt.partial),
            "param_groups": ckpt.optimizer["param_groups"]}
    payload = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={META_KEY: json.dumps(meta)})
    return atomic_write_bytes(Path(path), payload)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint. Raises CheckpointError (naming the file and the field) for a missing,
    truncated, corrupt or foreign file, or any value that does not fit the run's settings."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume: no such checkpoint {path}")
    header, data_bytes = _read_header(path)
    meta = _metadata(path, header)
    try:
        config = config_from_dict(meta.get("config"), f"{path}: config")
    except DigitlabError as e:
        raise CheckpointError(str(e)) from None
    epoch, step, steps_per_epoch = _position(path, meta, config)
    history = _history(path, meta.get("history"), epoch)
    partial = _partial(path, meta.get("partial"), step, config.batch_size)
    expected, param_groups = _expected(config, optimizer_started=epoch > 0 or step > 0)
    _check_param_groups(path, meta.get("param_groups"), param_groups)
    _check_tensor_table(path, header, expected, data_bytes)
    try:
        tensors = st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a digitlab checkpoint, or truncated/corrupt ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value.reshape(expected[key][2])
    return Checkpoint(
        config=config, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, history=history,
        partial=partial, rng=tensors["rng"],
        model={k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")},
        optimizer={"state": state, "param_groups": meta["param_groups"]})


def _fail(path: Path, name: str, message: str) -> CheckpointError:
    return CheckpointError(f"{path}: {name}: {message}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors JSON header (8 bytes little-endian length, then JSON), read without the data,
    and the number of bytes the tensors may take (the file size less the header)."""
    corrupt = f"{path}: not a digitlab checkpoint, or truncated/corrupt"
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{corrupt} (header of {n} bytes in a file of {size})")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{corrupt} ({_short(str(e), 200)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{corrupt} (the header is not a JSON object)")
    return header, size - 8 - n


def _metadata(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's JSON document, from the header's string-to-string metadata."""
    strings = header.get("__metadata__")
    text = strings.get(META_KEY) if isinstance(strings, dict) else None
    if not isinstance(text, str):
        raise CheckpointError(f"{path}: not a digitlab checkpoint (no {META_KEY} metadata)")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: {META_KEY}: not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a digitlab checkpoint (kind is not {KIND!r})")
    return meta


def _whole(path: Path, name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail(path, name, f"expected a whole number in {low}..{high}, got {_short(value)}")
    return value


def _position(path: Path, meta: dict[str, Any], config: TrainConfig) -> tuple[int, int, int]:
    """(epoch, step, steps_per_epoch), each in range for the run's settings."""
    # A run has at most 60,000 images an epoch (batch 1: 60,000 steps); the trainer checks the exact
    # figure against the data it loads.
    steps_per_epoch = _whole(path, "steps_per_epoch", meta.get("steps_per_epoch"), 1, 10**7)
    epoch = _whole(path, "epoch", meta.get("epoch"), 0, config.epochs)
    step = _whole(path, "step", meta.get("step"), 0, 0 if epoch == config.epochs else steps_per_epoch - 1)
    return epoch, step, steps_per_epoch


def _history(path: Path, history: Any, epoch: int) -> dict[str, list[float]]:
    if not isinstance(history, dict):
        raise _fail(path, "history", f"expected an object of per-epoch lists, got {_short(history)}")
    for key, values in history.items():
        if not (isinstance(values, list) and len(values) == epoch
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise _fail(path, f"history.{key}", f"expected {epoch} numbers (one per epoch done), got "
                        f"{_short(values)}")
    if epoch and not {"loss", "accuracy", "seconds"} <= set(history):
        raise _fail(path, "history", "expected loss, accuracy and seconds for the epochs done")
    return history


def _partial(path: Path, partial: Any, step: int, batch_size: int) -> tuple[float, int, int]:
    """(loss sum, correct, seen) of the epoch under way: at most `step` batches seen."""
    if not (isinstance(partial, list) and len(partial) == 3):
        raise _fail(path, "partial", f"expected [loss sum, correct, seen], got {_short(partial)}")
    loss_sum, correct, seen = partial
    seen = _whole(path, "partial.seen", seen, 0, step * batch_size)
    correct = _whole(path, "partial.correct", correct, 0, seen)
    if not isinstance(loss_sum, (int, float)) or isinstance(loss_sum, bool) or not 0 <= loss_sum < math.inf:
        raise _fail(path, "partial.loss", f"expected a number >= 0, got {_short(loss_sum)}")
    return float(loss_sum), correct, seen


def _expected(config: TrainConfig, optimizer_started: bool) -> tuple[dict[str, tuple[str, list[int], tuple]], list]:
    """Every tensor the run's checkpoint holds, name -> (dtype, shape in the file, shape in memory), and
    the optimizer's param_groups. The optimizer's state is found by one zero-gradient step of the
    configured optimizer on zero tensors of the architecture's shapes (it has none before the first step)."""
    shapes = param_shapes(ARCHITECTURES[config.arch])
    expected = {f"model/{k}": ("F32", list(s), s) for k, (s, _) in shapes.items()}
    params = [torch.zeros(s, requires_grad=True) for s, trainable in shapes.values() if trainable]
    optimizer = make_optimizer(config, params)
    if optimizer_started:
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    state = optimizer.state_dict()
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            expected[f"optim/{pid}/{key}"] = ("F32", list(value.shape) or [1], tuple(value.shape))
    rng = torch.get_rng_state()
    expected["rng"] = ("U8", list(rng.shape), tuple(rng.shape))
    return expected, json.loads(json.dumps(state["param_groups"]))


def _check_param_groups(path: Path, groups: Any, reference: list[dict[str, Any]]) -> None:
    """The optimizer's settings must be the config's (only the learning rate moves, with the schedule)."""
    if not (isinstance(groups, list) and len(groups) == len(reference) and all(isinstance(g, dict) for g in groups)):
        raise _fail(path, "param_groups", f"expected {len(reference)} optimizer group(s), got {_short(groups)}")
    for group, ref in zip(groups, reference, strict=True):
        if set(group) != set(ref):
            raise _fail(path, "param_groups", f"expected the keys {sorted(ref)}, got {_short(sorted(group))}")
        for key, value in ref.items():
            if key == "lr":
                lr = group["lr"]
                if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr < math.inf:
                    raise _fail(path, "param_groups.lr", f"expected a positive number, got {_short(lr)}")
            elif group[key] != value:
                raise _fail(path, f"param_groups.{key}", f"expected {_short(value)} (from the config), "
                            f"got {_short(group[key])}")


def _check_tensor_table(path: Path, header: dict[str, Any], expected: dict[str, tuple], data_bytes: int) -> None:
    """Every tensor the run needs, with its dtype and shape, and no other; the file's data exactly their size."""
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(expected) - set(table))
    extra = sorted(set(table) - set(expected))
    if missing or extra:
        raise _fail(path, "tensors", f"do not match the run's architecture and optimizer (missing "
                    f"{_short(missing)}, unexpected {_short(extra)})")
    needed = 0
    for name, (dtype, shape, _) in expected.items():
        entry = table[name]
        if not isinstance(entry, dict) or entry.get("dtype") != dtype or entry.get("shape") != shape:
            got = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else entry
            raise _fail(path, f"tensor {name}", f"expected {dtype} of shape {shape}, got {_short(got)}")
        needed += DTYPES[dtype] * math.prod(shape)
    if data_bytes != needed:
        raise CheckpointError(f"{path}: not a digitlab checkpoint, or truncated/corrupt ({data_bytes} bytes of "
                              f"tensor data, expected {needed})")
