"""Architectures as plain layer lists, built either as a PyTorch module (training) or run in NumPy
(inference without importing torch, which alone takes 2-3 s to import on a small machine).

The default architecture is the tutorial's Keras network, layer for layer and name for name:
Conv32-Pool-Conv64-Pool-Conv64-Flatten-Dense64-Dense10, 93,322 parameters. Parameter names in the
state dict are the Keras layer names (``conv2d.weight``, ``dense_1.bias``...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    def from_dict(cls, d: Any) -> ArchConfig:
        """An ArchConfig from a JSON object (missing settings take the defaults above).

        Every setting is type- and range-checked (ints are not bools, pool_after indexes convs, the
        parameter count stays under MAX_PARAMS), so a file cannot declare a network too big to hold.
        Raises ModelFileError naming the setting."""
        if not isinstance(d, dict):
            raise ModelFileError(f"expected an object of settings, got {type(d).__name__}")
        unknown = sorted(str(k)[:40] for k in set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ModelFileError(f"unknown architecture settings {unknown[:5]}")
        for key, value in d.items():
            _check_setting(key, value)
        cfg = cls(**d)
        bad_pool = [i for i in cfg.pool_after if i >= len(cfg.convs)]
        if bad_pool:
            raise ModelFileError(f"pool_after: {bad_pool[0]} is not the index of one of the {len(cfg.convs)} convs")
        if count_params(cfg) > MAX_PARAMS:
            raise ModelFileError(f"{count_params(cfg):,} parameters, over the {MAX_PARAMS:,} this format allows")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (what model files store under arch_config)."""
        return asdict(self)


MAX_PARAMS = 16_000_000  # 64 MB of float32; the largest named architecture has 0.5M
# Each setting: (type, lowest, highest); lists give their items' type and range, and their length range.
_SETTINGS: dict[str, tuple[type, float, float]] = {
    "stem_kernel": (int, 1, 28), "stem_stride": (int, 1, 28), "dense": (int, 1, 65536),
    "batchnorm": (bool, 0, 1), "dropout": (float, 0.0, 0.99), "classes": (int, 1, 1000),
}
_LIST_SETTINGS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "convs": ((1, 16), (1, 4096)),  # 1 to 16 convs of 1 to 4096 channels
    "pool_after": ((0, 16), (0, 15)),
}


def _number_ok(value: Any, kind: type, low: float, high: float) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        return False
    return low <= value <= high


def _check_setting(key: str, value: Any) -> None:
    """One architecture setting against its type and range; ModelFileError naming it otherwise."""
    if key in _LIST_SETTINGS:
        (n_low, n_high), (low, high) = _LIST_SETTINGS[key]
        if not isinstance(value, list) or not n_low <= len(value) <= n_high \
                or not all(_number_ok(v, int, low, high) for v in value):
            raise ModelFileError(f"arch_config.{key}: expected a list of {n_low}-{n_high} integers in "
                                 f"{low}..{high}, got {_brief(value)}")
        return
    kind, low, high = _SETTINGS[key]
    if not _number_ok(value, kind, low, high):
        what = "true or false" if kind is bool else f"{'a number' if kind is float else 'an integer'} in {low}..{high}"
        raise ModelFileError(f"arch_config.{key}: expected {what}, got {_brief(value)}")


def _brief(value: Any, limit: int = 60) -> str:
    """repr(value) cut to limit characters: error messages stay one short line whatever a file holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


ARCHITECTURES: dict[str, ArchConfig] = {
    "tutorial": ArchConfig(),
    # The tutorial's shape at 3/4 the width: 60k parameters, 58% of its multiply-adds; `fast`'s before `quick`.
    "small": ArchConfig(convs=[24, 48, 48], dense=64),
    # Wider, batch-normalised, with dropout: the `best` recipe's net before lean-bn (99.66% in 24 epochs).
    "wide-bn": ArchConfig(convs=[32, 64, 128], dense=128, batchnorm=True, dropout=0.25),
    # wide-bn with a 4x4 stride-2 first conv in place of conv-then-pool at 26x26: that first stage was
    # half of wide-bn's step on a CPU (the 1-channel conv, batch norm and pooling over 26x26x32 maps).
    "lean-bn": ArchConfig(convs=[32, 64, 128], stem_kernel=4, stem_stride=2, pool_after=[1], dense=128,
                          batchnorm=True, dropout=0.25),
    # Two convs per pooling stage (24-32, pool, 48-64, pool): more depth at a cost 2.5x the tutorial's.
    "deep-bn": ArchConfig(convs=[24, 32, 48, 64], pool_after=[1, 3], dense=128, batchnorm=True, dropout=0.25),
    # The `fast` recipe's (the CPU record to 99%): a 5x5 stride-2 first conv (24 maps of 12x12, in place of
    # conv-then-pool over 24x24), one 3x3 conv (32), one pool, a wide dense layer (256: cheap beside the convs).
    # The shape of tuomaso/train_mnist_fast's net with its first stage strided. 2.0 MFLOP forward an image (60%
    # of `small`'s) but a step per image 2.5-3x cheaper on a CPU: no 1-channel conv, pool and pool gradient over
    # 26x26 maps. No batch norm: Keras's slow running statistics are not ready after one epoch's 235 steps.
    "quick": ArchConfig(convs=[24, 32], stem_kernel=5, stem_stride=2, pool_after=[1], dense=256),
}

# Each layer: (name, keras_type, settings). ReLU layers carry Keras's convention: the activation
# belongs to the layer before it, so the summary folds it in.
Layer = tuple[str, str, dict[str, int | float]]


def layer_specs(cfg: ArchConfig) -> list[Layer]:
    """The network as a list of (name, kind, settings), in order, for a 28x28x1 input.

    Names are Keras's automatic ones (conv2d, conv2d_1...); kinds are keys of LAYER_KINDS. Settings:
    Conv2D in/out channels, kernel, stride and output side; BatchNormalization features; MaxPooling2D
    size and output side; Dropout rate; Dense in/out features. Raises ModelFileError for an architecture
    that shrinks the image to nothing or has a stem kernel or stride below 1."""
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
    """Every tensor of the state dict: name -> (shape, trainable), in layer order.

    Shapes are PyTorch's (conv weights (out, in, k, k), dense weights (out, in)); all tensors are float32."""
    shapes: dict[str, tuple[tuple[int, ...], bool]] = {}
    for name, _, spec, s in resolved_layers(cfg):
        for suffix, (shape, trainable) in spec.params(s).items():
            shapes[f"{name}.{suffix}"] = (shape, trainable)
    return shapes


def build_torch(cfg: ArchConfig):  # -> torch.nn.Sequential
    """The PyTorch module, with Keras's default initialisation (Glorot-uniform weights, zero biases)
    so that training behaves like the tutorial's."""
    from collections import OrderedDict

    import torch
    from torch import nn

    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for name, _, spec, s in resolved_layers(cfg):
        modules[name] = spec.torch(nn, s)
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


def load_weights(net: Any, weights: dict[str, Any]) -> None:
    """Load weights (name -> torch tensor, as our files and checkpoints hold them) into a build_torch net.

    PyTorch's BatchNorm adds its step counter `num_batches_tracked` to a state dict that lacks PyTorch's
    version metadata (a plain dict, as read from safetensors); build_torch does not keep that counter, so
    it is the one unexpected key allowed. Raises RuntimeError naming any other missing or unexpected key."""
    result = net.load_state_dict(weights, strict=False)
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if result.missing_keys or unexpected:
        raise RuntimeError(f"weights do not fit the network: missing {result.missing_keys}, unexpected {unexpected}")


def summary(cfg: ArchConfig) -> str:
    """Keras's model.summary() table. Shapes are printed channels-last, (batch, height, width,
    channels), as Keras prints them; the PyTorch module stores the same tensors channels-first."""
    rows = []
    shape: tuple[int, ...] = (28, 28, 1)
    shapes = param_shapes(cfg)
    trainable = sum(int(np.prod(s)) for s, t in shapes.values() if t)
    frozen = sum(int(np.prod(s)) for s, t in shapes.values() if not t)
    for name, kind, spec, s in resolved_layers(cfg):
        shape = spec.out_shape(shape, s)
        if not spec.shown:
            continue  # Keras folds activations into the layer before
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
    """Number of values in the state dict (weights, biases and batch-norm statistics)."""
    return sum(int(np.prod(s)) for s, _ in param_shapes(cfg).values())


def numpy_forward(cfg: ArchConfig, weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Logits (N, classes) for x of shape (N, 28, 28) float32 in [0, 1], computed in NumPy, channels-last.

    The same arithmetic as the PyTorch module in eval mode (within float32 rounding), without
    importing torch: the CLI's predict and the server start in a fraction of a second.
    """
    h = x.reshape(x.shape[0], 28, 28, 1).astype(np.float32, copy=False)
    for name, _, spec, s in resolved_layers(cfg):
        h = spec.numpy(h, weights, name, s)
    return h


def forward_bytes(cfg: ArchConfig) -> int:
    """Bytes per image that numpy_forward holds at its peak: the largest layer's input, output and scratch
    (a convolution's im2col matrix: side^2 x in x k^2 float32), from LAYER_KINDS. The architecture alone
    fixes it, so a caller can size its batches before running anything: a file may declare a net within
    MAX_PARAMS whose activations are 13 MB an image (4096 1x1 channels over 28x28), 13 GB for a batch of 1024."""
    peak, shape = 0, (28, 28, 1)
    for _, _, kind, s in resolved_layers(cfg):
        out = kind.out_shape(shape, s)
        peak = max(peak, 4 * (math.prod(shape) + kind.scratch(s) + math.prod(out)))
        shape = out
    return peak


# --- The layer kinds: one entry per kind, every consumer above (and the ONNX graph) goes through it ---

Params = dict[str, tuple[tuple[int, ...], bool]]  # tensor suffix ("weight") -> (shape, trainable)


@dataclass(frozen=True)
class LayerKind:
    """What each consumer needs to know about one kind of layer. Every field is required, so a new
    kind cannot be added without saying how each consumer handles it.

    params(s): its tensors. torch(nn, s): its PyTorch module. numpy(h, weights, name, s): its
    inference on channels-last h (N, H, W, C), or (N, F) after Flatten. out_shape(shape, s): the
    channels-last output shape for the summary. shown: a row of its own in the summary (ReLU is folded
    into the layer before, as Keras does). onnx(s): (op_type, tensor suffixes after the input,
    attributes), or None for an identity at inference (Dropout). flops(s): multiply-adds x 2 per image.
    scratch(s): float32 values numpy() holds beside its input and output, per image (forward_bytes).
    """

    params: Callable[[dict], Params]
    torch: Callable[[Any, dict], Any]
    numpy: Callable[[np.ndarray, dict[str, np.ndarray], str, dict], np.ndarray]
    out_shape: Callable[[tuple[int, ...], dict], tuple[int, ...]]
    shown: bool
    onnx: Callable[[dict], tuple[str, list[str], dict[str, Any]] | None]
    flops: Callable[[dict], float]
    scratch: Callable[[dict], int]


def _np_conv(h: np.ndarray, weights: dict[str, np.ndarray], name: str, s: dict) -> np.ndarray:
    k = s["kernel"]
    w = weights[f"{name}.weight"]  # (out, in, k, k)
    win = np.lib.stride_tricks.sliding_window_view(h, (k, k), axis=(1, 2))  # N,H',W',C,k,k
    win = win[:, :: s["stride"], :: s["stride"]]
    n, hh, ww = win.shape[:3]
    cols = win.reshape(n * hh * ww, -1)
    return (cols @ w.reshape(w.shape[0], -1).T + weights[f"{name}.bias"]).reshape(n, hh, ww, -1)


def _np_batchnorm(h: np.ndarray, weights: dict[str, np.ndarray], name: str, s: dict) -> np.ndarray:
    scale = weights[f"{name}.weight"] / np.sqrt(weights[f"{name}.running_var"] + 1e-3)
    return (h - weights[f"{name}.running_mean"]) * scale + weights[f"{name}.bias"]


def _np_relu(h: np.ndarray, weights: dict[str, np.ndarray], name: str, s: dict) -> np.ndarray:
    np.maximum(h, 0, out=h)
    return h


def _np_maxpool(h: np.ndarray, weights: dict[str, np.ndarray], name: str, s: dict) -> np.ndarray:
    n, hh, ww, c = h.shape
    p = s["size"]
    return h[:, : hh // p * p, : ww // p * p].reshape(n, hh // p, p, ww // p, p, c).max(axis=(2, 4))


def _np_flatten(h: np.ndarray, weights: dict[str, np.ndarray], name: str, s: dict) -> np.ndarray:
    return np.ascontiguousarray(h.transpose(0, 3, 1, 2)).reshape(h.shape[0], -1)  # torch's NCHW order


def _np_dense(h: np.ndarray, weights: dict[str, np.ndarray], name: str, s: dict) -> np.ndarray:
    return h @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]


def _same_shape(shape: tuple[int, ...], s: dict) -> tuple[int, ...]:
    return shape


def _no_params(s: dict) -> Params:
    return {}


def _no_flops(s: dict) -> float:
    return 0.0


def _no_scratch(s: dict) -> int:
    return 0


LAYER_KINDS: dict[str, LayerKind] = {
    "Conv2D": LayerKind(
        params=lambda s: {"weight": ((s["out"], s["in"], s["kernel"], s["kernel"]), True), "bias": ((s["out"],), True)},
        torch=lambda nn, s: nn.Conv2d(s["in"], s["out"], s["kernel"], stride=s["stride"]),
        numpy=_np_conv,
        out_shape=lambda shape, s: (s["side"], s["side"], s["out"]),
        shown=True,
        onnx=lambda s: ("Conv", ["weight", "bias"], {"kernel_shape": [s["kernel"]] * 2, "strides": [s["stride"]] * 2}),
        flops=lambda s: 2.0 * s["side"] ** 2 * s["out"] * s["in"] * s["kernel"] ** 2,
        scratch=lambda s: s["side"] ** 2 * s["in"] * s["kernel"] ** 2,  # the im2col matrix
    ),
    "BatchNormalization": LayerKind(
        params=lambda s: {"weight": ((s["features"],), True), "bias": ((s["features"],), True),
                          "running_mean": ((s["features"],), False), "running_var": ((s["features"],), False)},
        # Keras's momentum 0.99 is PyTorch's 0.01; its epsilon is 1e-3.
        torch=lambda nn, s: nn.BatchNorm2d(s["features"], eps=1e-3, momentum=0.01, track_running_stats=True),
        numpy=_np_batchnorm,
        out_shape=_same_shape,
        shown=True,
        onnx=lambda s: ("BatchNormalization", ["weight", "bias", "running_mean", "running_var"], {"epsilon": 1e-3}),
        flops=_no_flops, scratch=_no_scratch,
    ),
    "ReLU": LayerKind(
        params=_no_params, torch=lambda nn, s: nn.ReLU(inplace=True), numpy=_np_relu, out_shape=_same_shape,
        shown=False, onnx=lambda s: ("Relu", [], {}), flops=_no_flops, scratch=_no_scratch,
    ),
    "MaxPooling2D": LayerKind(
        params=_no_params, torch=lambda nn, s: nn.MaxPool2d(s["size"]), numpy=_np_maxpool,
        out_shape=lambda shape, s: (s["side"], s["side"], shape[2]), shown=True,
        onnx=lambda s: ("MaxPool", [], {"kernel_shape": [s["size"]] * 2, "strides": [s["size"]] * 2}),
        flops=_no_flops, scratch=_no_scratch,
    ),
    "Flatten": LayerKind(
        params=_no_params, torch=lambda nn, s: nn.Flatten(), numpy=_np_flatten,
        out_shape=lambda shape, s: (int(np.prod(shape)),), shown=True,
        onnx=lambda s: ("Flatten", [], {"axis": 1}),  # NCHW order, as PyTorch flattens
        flops=_no_flops, scratch=_no_scratch,
    ),
    "Dropout": LayerKind(
        params=_no_params, torch=lambda nn, s: nn.Dropout(s["rate"]),
        numpy=lambda h, weights, name, s: h,  # inference: identity
        out_shape=_same_shape, shown=True, onnx=lambda s: None, flops=_no_flops, scratch=_no_scratch,
    ),
    "Dense": LayerKind(
        params=lambda s: {"weight": ((s["out"], s["in"]), True), "bias": ((s["out"],), True)},
        torch=lambda nn, s: nn.Linear(s["in"], s["out"]),
        numpy=_np_dense,
        out_shape=lambda shape, s: (s["out"],),
        shown=True,
        onnx=lambda s: ("Gemm", ["weight", "bias"], {"transB": 1}),
        flops=lambda s: 2.0 * s["in"] * s["out"],
        scratch=_no_scratch,
    ),
}


def resolved_layers(cfg: ArchConfig) -> list[tuple[str, str, LayerKind, dict]]:
    """layer_specs with each layer's table entry: (name, kind, LayerKind, settings). Every kind is looked
    up before any consumer starts work, so an unknown one fails before anything is computed or built."""
    return [(name, kind, layer_kind(kind), s) for name, kind, s in layer_specs(cfg)]


def layer_kind(kind: str) -> LayerKind:
    """The table entry for a layer kind; raises ValueError for a kind the table lacks (never skipped)."""
    try:
        return LAYER_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown layer kind {kind!r}; known: {', '.join(LAYER_KINDS)}") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits: probabilities in [0, 1] summing to 1 per row (max subtracted first)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
