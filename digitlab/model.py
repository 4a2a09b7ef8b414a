"""Architectures as plain layer lists, built either as a PyTorch module (training) or run in NumPy
(inference without importing torch, which alone takes 2-3 s to import on a small machine).

The default architecture is the tutorial's Keras network, layer for layer and name for name:
Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10, 93,322 parameters. Parameter names in the
state dict are the Keras layer names (``conv2d.weight``, ``dense_1.bias``...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from digitlab.errors import ModelFileError


@dataclass
class ArchConfig:
    """The tutorial's topology with knobs: conv widths, a hidden dense layer, optional batch norm and dropout."""

    convs: list[int] = field(default_factory=lambda: [32, 64, 64])
    # The first conv's kernel and stride; the others are 3x3, stride 1, all "valid" (no padding).
    stem_kernel: int = 3
    stem_stride: int = 1
    pool_after: list[int] = field(default_factory=lambda: [0, 1])  # indices of convs followed by 2x2 max-pool
    dense: int = 64
    batchnorm: bool = False
    dropout: float = 0.0
    classes: int = 10

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelFileError(f"unknown architecture settings {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ARCHITECTURES: dict[str, ArchConfig] = {
    "tutorial": ArchConfig(),
    # The tutorial's shape at 3/4 the width: 60k parameters, 58% of its multiply-adds; what `fast` trains.
    "small": ArchConfig(convs=[24, 48, 48], dense=64),
    # Wider, batch-normalised, with dropout: the `best` recipe's net before lean-bn (99.66% in 24 epochs).
    "wide-bn": ArchConfig(convs=[32, 64, 128], dense=128, batchnorm=True, dropout=0.25),
    # wide-bn with a 4x4 stride-2 first conv in place of conv-then-pool at 26x26: that first stage was
    # half of wide-bn's step on a CPU (the 1-channel conv, batch norm and pooling over 26x26x32 maps).
    "lean-bn": ArchConfig(convs=[32, 64, 128], stem_kernel=4, stem_stride=2, pool_after=[1], dense=128,
                          batchnorm=True, dropout=0.25),
    # Two convs per pooling stage (24-32, pool, 48-64, pool): more depth at a cost 2.5x the tutorial's.
    "deep-bn": ArchConfig(convs=[24, 32, 48, 64], pool_after=[1, 3], dense=128, batchnorm=True, dropout=0.25),
}

# Each layer: (name, keras_type, settings). ReLU layers carry Keras's convention: the activation
# belongs to the layer before it, so the summary folds it in.
Layer = tuple[str, str, dict[str, int | float]]


def layer_specs(cfg: ArchConfig) -> list[Layer]:
    counters: dict[str, int] = {}

    def name(base: str) -> str:
        n = counters.get(base, 0)
        counters[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    if cfg.stem_kernel < 1 or cfg.stem_stride < 1:
        raise ModelFileError(f"architecture {cfg}: stem_kernel and stem_stride must be >= 1")
    layers: list[Layer] = []
    channels, size = 1, 28
    for i, width in enumerate(cfg.convs):
        k, stride = (cfg.stem_kernel, cfg.stem_stride) if i == 0 else (3, 1)
        side = (size - k) // stride + 1  # output height and width ("valid" convolution)
        layers.append((name("conv2d"), "Conv2D", {"in": channels, "out": width, "kernel": k, "stride": stride,
                                                  "side": side}))
        channels, size = width, side
        if cfg.batchnorm:
            layers.append((name("batch_normalization"), "BatchNormalization", {"features": width}))
        # Pool, then ReLU: max-pooling commutes with ReLU (both monotonic), so the result and the
        # gradients are the same as Keras's conv-relu-pool, but ReLU and its backward touch 4x fewer values.
        if i in cfg.pool_after:
            size //= 2
            layers.append((name("max_pooling2d"), "MaxPooling2D", {"size": 2, "side": size}))
        layers.append((name("re_lu"), "ReLU", {}))
    if size < 1:
        raise ModelFileError(f"architecture {cfg} shrinks a 28x28 image to nothing")
    layers.append((name("flatten"), "Flatten", {}))
    features = channels * size * size
    if cfg.dropout:
        layers.append((name("dropout"), "Dropout", {"rate": cfg.dropout}))
    layers.append((name("dense"), "Dense", {"in": features, "out": cfg.dense}))
    layers.append((name("re_lu"), "ReLU", {}))
    if cfg.dropout:
        layers.append((name("dropout"), "Dropout", {"rate": cfg.dropout}))
    layers.append((name("dense"), "Dense", {"in": cfg.dense, "out": cfg.classes}))
    return layers


def param_shapes(cfg: ArchConfig) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Every tensor of the state dict: name -> (shape, trainable)."""
    shapes: dict[str, tuple[tuple[int, ...], bool]] = {}
    for name, kind, s in layer_specs(cfg):
        if kind == "Conv2D":
            shapes[f"{name}.weight"] = ((s["out"], s["in"], s["kernel"], s["kernel"]), True)
            shapes[f"{name}.bias"] = ((s["out"],), True)
        elif kind == "Dense":
            shapes[f"{name}.weight"] = ((s["out"], s["in"]), True)
            shapes[f"{name}.bias"] = ((s["out"],), True)
        elif kind == "BatchNormalization":
            f = s["features"]
            shapes.update({f"{name}.weight": ((f,), True), f"{name}.bias": ((f,), True),
                           f"{name}.running_mean": ((f,), False), f"{name}.running_var": ((f,), False)})
    return shapes


def build_torch(cfg: ArchConfig):  # -> torch.nn.Sequential
    """The PyTorch module, with Keras's default initialisation (Glorot-uniform weights, zero biases)
    so that training behaves like the tutorial's."""
    from collections import OrderedDict

    import torch
    from torch import nn

    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for name, kind, s in layer_specs(cfg):
        if kind == "Conv2D":
            modules[name] = nn.Conv2d(s["in"], s["out"], s["kernel"], stride=s["stride"])
        elif kind == "BatchNormalization":
            # Keras's momentum 0.99 is PyTorch's 0.01; its epsilon is 1e-3.
            modules[name] = nn.BatchNorm2d(s["features"], eps=1e-3, momentum=0.01, track_running_stats=True)
        elif kind == "ReLU":
            modules[name] = nn.ReLU(inplace=True)
        elif kind == "MaxPooling2D":
            modules[name] = nn.MaxPool2d(s["size"])
        elif kind == "Flatten":
            modules[name] = nn.Flatten()
        elif kind == "Dropout":
            modules[name] = nn.Dropout(s["rate"])
        elif kind == "Dense":
            modules[name] = nn.Linear(s["in"], s["out"])
    net = nn.Sequential(modules)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Glorot-uniform: fan_in/fan_out as Keras computes them
                nn.init.zeros_(m.bias)
    # The BatchNorm step counter is bookkeeping PyTorch keeps; our files store only what inference needs.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_buffer("num_batches_tracked", None)
    return net


def summary(cfg: ArchConfig) -> str:
    """Keras's model.summary() table. Shapes are printed channels-last, (batch, height, width,
    channels), as Keras prints them; the PyTorch module stores the same tensors channels-first."""
    rows = []
    shape: tuple[int, ...] = (28, 28, 1)
    shapes = param_shapes(cfg)
    trainable = sum(int(np.prod(s)) for s, t in shapes.values() if t)
    frozen = sum(int(np.prod(s)) for s, t in shapes.values() if not t)
    for name, kind, s in layer_specs(cfg):
        if kind == "ReLU":
            continue  # Keras folds activations into the layer before
        if kind == "Conv2D":
            shape = (s["side"], s["side"], s["out"])
        elif kind == "MaxPooling2D":
            shape = (s["side"], s["side"], shape[2])
        elif kind == "Flatten":
            shape = (int(np.prod(shape)),)
        elif kind == "Dense":
            shape = (s["out"],)
        params = sum(int(np.prod(sh)) for key, (sh, _) in shapes.items() if key.startswith(name + "."))
        rows.append((f"{name} ({kind})", "(None, " + ", ".join(map(str, shape)) + ")", f"{params:,}"))
    # Keras's column widths, the first widened for long names (batch_normalization_1 (BatchNormalization)).
    widths = (max([31] + [len(a) + 1 for a, _, _ in rows]), 26, 12)
    line, heavy = "_" * sum(widths), "=" * sum(widths)
    out = [line, f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>{widths[2]}}", heavy]
    for i, (a, b, c) in enumerate(rows):
        out.append(f"{a:<{widths[0]}}{b:<{widths[1]}}{c:>{widths[2]}}")
        out.append(heavy if i == len(rows) - 1 else line)
    out += [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {frozen:,}", line]
    return "\n".join(out)


def count_params(cfg: ArchConfig) -> int:
    return sum(int(np.prod(s)) for s, _ in param_shapes(cfg).values())


def numpy_forward(cfg: ArchConfig, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits for x of shape (N, 28, 28) float32 in [0, 1], computed in NumPy, channels-last.

    The same arithmetic as the PyTorch module in eval mode (within float32 rounding), without
    importing torch: the CLI's predict and the server start in a fraction of a second.
    """
    h = x.reshape(x.shape[0], 28, 28, 1).astype(np.float32, copy=False)
    for name, kind, s in layer_specs(cfg):
        if kind == "Conv2D":
            k = s["kernel"]
            w = weights[f"{name}.weight"]  # (out, in, k, k)
            win = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(1, 2))  # N,H',W',C,k,k
            win = win[:, :: s["stride"], :: s["stride"]]
            n, hh, ww = win.shape[:3]
            cols = win.reshape(n * hh * ww, -1)
            h = (cols @ w.reshape(w.shape[0], -1).T + weights[f"{name}.bias"]).reshape(n, hh, ww, -1)
        elif kind == "BatchNormalization":
            scale = weights[f"{name}.weight"] / np.sqrt(weights[f"{name}.running_var"] + 1e-3)
            h = (h - weights[f"{name}.running_mean"]) * scale + weights[f"{name}.bias"]
        elif kind == "ReLU":
            np.maximum(h, 0, out=h)
        elif kind == "MaxPooling2D":
            n, hh, ww, c = h.shape
            p = s["size"]
            h = h[:, : hh // p * p, : ww // p * p].reshape(n, hh // p, p, ww // p, p, c).max(axis=(2, 4))
        elif kind == "Flatten":
            h = np.ascontiguousarray(h.transpose(0, 3, 1, 2)).reshape(h.shape[0], -1)  # torch's NCHW order
        elif kind == "Dense":
            h = h @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]
    return h


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
