"""Keras models in (no TensorFlow needed): the tutorial's network from a .h5 or .keras file.

Keras files are read with h5py and zipfile, following the file's own ``layer_names`` and
``weight_names`` attributes, so both the tf.keras 2.x layout (``model_weights/conv2d/conv2d/kernel:0``)
and the Keras 3 one (``model_weights/conv2d/sequential/conv2d/kernel``) load, as do a Keras 3
``.keras`` zip (``model.weights.h5`` with ``layers/<class key>/vars/<i>``) and a Keras 3 ``.weights.h5``.

Every config setting that changes the arithmetic (data_format, padding, strides, dilation_rate, groups,
use_bias, activation, pooling size and strides, dtype, LoRA, quantization, the input shape) is checked
against what digitlab computes and refused by name when it differs; settings of other kinds are refused
too unless known to be harmless at inference (initializers, regularizers, constraints, names). Every
dataset's declared shape and dtype is checked before it is read, and zip members are size-capped, so a
small file cannot make the importer allocate what it declares.

Layouts differ: Keras conv kernels are (h, w, in, out) where PyTorch's are (out, in, h, w); Dense
kernels are (in, out) where Linear's are (out, in); and Keras flattens channels-last, so the first
Dense layer's rows are permuted from (h, w, c) to PyTorch's (c, h, w) order.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from digitlab._io import LimitExceeded, read_bounded
from digitlab.errors import ModelFileError
from digitlab.model import ArchConfig, _brief

TUTORIAL_LAYERS = ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense", "Dense"]
KERAS_SHAPES = [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (3, 3, 64, 64), (64,), (576, 64), (64,), (64, 10), (10,)]
# Keras 3 (.keras, and .weights.h5 from save_weights) files each layer's variables under a key made from
# its class, numbered in model order ("conv2d", "conv2d_1"...), never from its name: a model built second
# in a notebook (layers conv2d_3...) or with names of its own is stored under these same five keys.
KERAS3_KEYS = ["conv2d", "conv2d_1", "conv2d_2", "dense", "dense_1"]
MAX_CONFIG_BYTES = 1 << 20  # the tutorial's config.json is 6 KB
MAX_WEIGHTS_BYTES = 8 << 20  # its model.weights.h5 is 0.4 MB

_SAME = ("__any__",)  # marker: the value is checked elsewhere or cannot change the arithmetic
# Settings that cannot change inference arithmetic: accepted whatever their value.
HARMLESS = {"name", "trainable", "kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer",
            "activity_regularizer", "kernel_constraint", "bias_constraint", "optional", "lora_alpha"}
FLOAT32 = ("float32", {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}})
INPUT_SHAPE = [None, 28, 28, 1]
# Per class: setting -> (Keras's default when absent, accepted values). "{filters}" etc. are per-layer.
RULES: dict[str, dict[str, tuple[Any, tuple[Any, ...]]]] = {
    "Conv2D": {"filters": (None, ("{filters}",)), "kernel_size": (None, (3, [3, 3])), "strides": (1, (1, [1, 1])),
               "padding": ("valid", ("valid",)), "data_format": (None, (None, "channels_last")),
               "dilation_rate": (1, (1, [1, 1])), "groups": (1, (1,)), "activation": (None, ("relu",)),
               "use_bias": (True, (True,)), "dtype": ("float32", FLOAT32), "lora_rank": (None, (None,)),
               "quantization_config": (None, (None,)), "batch_input_shape": (INPUT_SHAPE, (INPUT_SHAPE,))},
    "MaxPooling2D": {"pool_size": (2, (2, [2, 2])), "strides": (None, (None, 2, [2, 2])),
                     "padding": ("valid", ("valid",)), "data_format": (None, (None, "channels_last")),
                     "dtype": ("float32", FLOAT32)},
    "Flatten": {"data_format": (None, (None, "channels_last")), "dtype": ("float32", FLOAT32)},
    "Dense": {"units": (None, ("{units}",)), "activation": (None, ("{activation}",)), "use_bias": (True, (True,)),
              "dtype": ("float32", FLOAT32), "lora_rank": (None, (None,)), "quantization_config": (None, (None,))},
    "InputLayer": {"batch_shape": (INPUT_SHAPE, (INPUT_SHAPE,)), "batch_input_shape": (INPUT_SHAPE, (INPUT_SHAPE,)),
                   "dtype": ("float32", FLOAT32), "sparse": (False, (False,)), "ragged": (False, (False,))},
}
# The tutorial's per-layer values, in order of the Conv2D and Dense layers.
PER_LAYER = [{"filters": 32}, {"filters": 64}, {"filters": 64},
             {"units": 64, "activation": "relu"}, {"units": 10, "activation": "softmax"}]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _same(value: Any, accepted: Any) -> bool:
    """value equals accepted, treating tuples as lists and ignoring Keras's bookkeeping keys in dicts."""
    if isinstance(accepted, dict):
        return isinstance(value, dict) and all(_same(value.get(k), v) for k, v in accepted.items())
    if isinstance(value, tuple):
        value = list(value)
    return type(value) is type(accepted) and value == accepted  # True is not 1, 3.0 is not 3


def _check_layer(path: Path, index: int, layer: Any, per_layer: dict[str, Any]) -> None:
    """One layer's config against RULES; ModelFileError naming the layer and the setting otherwise."""
    cls = layer.get("class_name") if isinstance(layer, dict) else None
    cfg = layer.get("config") if isinstance(layer, dict) else None
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path}: layer {index} ({_brief(cls)}) has no config object")
    rules = RULES[cls]
    where = f"{path}: layer {str(cfg.get('name', index))[:40]} ({cls})"
    for key in cfg:
        if key not in rules and key not in HARMLESS:
            raise ModelFileError(f"{where}: setting {_brief(key, 40)} is not supported (it may change the "
                                 f"arithmetic); expected only {', '.join(sorted(rules))} and harmless ones")
    for key, (default, accepted) in rules.items():
        value = cfg.get(key, default)
        wanted = [per_layer[a[1:-1]] if isinstance(a, str) and a.startswith("{") else a for a in accepted]
        if not any(_same(value, a) for a in wanted):
            shown = " or ".join(json.dumps(a) for a in wanted)
            raise ModelFileError(f"{where}: {key} = {_brief(value)} is not supported; digitlab computes {shown}")


def check_config(path: Path, config: Any) -> None:
    """The model config must describe the tutorial's network, setting by setting (see RULES)."""
    cfg = config.get("config", {}) if isinstance(config, dict) else None
    layers = cfg.get("layers", cfg) if isinstance(cfg, dict) else cfg
    if not isinstance(layers, list):
        name = config.get("class_name") if isinstance(config, dict) else None
        raise ModelFileError(f"{path}: model config has no layer list (class {_brief(name)})")
    found = [layer.get("class_name") if isinstance(layer, dict) else None for layer in layers]
    body = [c for c in found if c != "InputLayer"]
    if body != TUTORIAL_LAYERS:
        raise ModelFileError(f"{path}: architecture {' -> '.join(str(c)[:20] for c in body[:12])} is not the "
                             f"tutorial's; expected {' -> '.join(TUTORIAL_LAYERS)}")
    weighted = iter(PER_LAYER)
    for i, layer in enumerate(layers):
        _check_layer(path, i, layer, next(weighted) if found[i] in ("Conv2D", "Dense") else {})


def _dataset(path: Path, node: Any, where: str, expected: tuple[int, ...]) -> np.ndarray:
    """Read one weight after checking its declared shape and dtype (nothing is allocated before)."""
    import h5py

    if not isinstance(node, h5py.Dataset):
        raise ModelFileError(f"{path}: {where} is not a dataset")
    if tuple(node.shape or ()) != expected or node.dtype.kind != "f":
        raise ModelFileError(f"{path}: {where} is {node.dtype} of shape {_brief(node.shape)}; "
                             f"expected float32 {expected} (the tutorial's network)")
    return np.asarray(node[()], dtype=np.float32)


def _weights_from_h5_group(path: Path, group, layer_names: list[str]) -> list[np.ndarray]:
    """Kernels and biases in layer order, located through each layer's weight_names attribute."""
    arrays: list[np.ndarray] = []
    for name in layer_names:
        if name not in group:
            raise ModelFileError(f"{path}: layer_names lists {_brief(name, 40)}, which the file lacks")
        layer = group[name]
        for wname in layer.attrs.get("weight_names", []):
            wname = _text(wname)
            if len(arrays) == len(KERAS_SHAPES):
                raise ModelFileError(f"{path}: more weights than the tutorial's {len(KERAS_SHAPES)}")
            if wname not in layer:
                raise ModelFileError(f"{path}: layer {_brief(name, 40)} lists weight {_brief(wname, 60)}, "
                                     "which the file lacks")
            arrays.append(_dataset(path, layer[wname], f"{name}/{wname}", KERAS_SHAPES[len(arrays)]))
    return arrays


def _keras3_variables(path: Path, f) -> list[np.ndarray]:
    """Kernels and biases in layer order from a Keras 3 weights file (layers/<key>/vars/<i>)."""
    arrays: list[np.ndarray] = []
    for key in KERAS3_KEYS:
        if f"layers/{key}/vars" not in f:
            raise ModelFileError(f"{path}: Keras 3 weights without layers/{key}/vars; expected the tutorial's "
                                 f"layers {', '.join(KERAS3_KEYS)}")
        variables = f[f"layers/{key}/vars"]
        if len(variables) != 2:
            raise ModelFileError(f"{path}: layers/{key}/vars holds {len(variables)} variables; expected "
                                 "a kernel and a bias")
        for i in range(2):
            if str(i) not in variables:
                raise ModelFileError(f"{path}: layers/{key}/vars lacks variable {i}")
            arrays.append(_dataset(path, variables[str(i)], f"layers/{key}/vars/{i}", KERAS_SHAPES[len(arrays)]))
    return arrays


def _read_h5(path: Path, source: Any = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    import h5py

    try:
        f = h5py.File(source if source is not None else path, "r")
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable HDF5 file, or truncated ({_brief(str(e), 120)})") from None
    with f:
        info = {"keras_version": _text(f.attrs.get("keras_version", "unknown"))[:40], "format": "h5"}
        if "model_config" in f.attrs:
            check_config(path, _json(path, f.attrs["model_config"], "model_config"))
        group = f["model_weights"] if "model_weights" in f else f  # whole model, or save_weights() output
        if "layer_names" not in group.attrs and "layers" in f:  # Keras 3 save_weights(): a .weights.h5
            return _keras3_variables(path, f), {**info, "format": "weights.h5"}
        if "layer_names" not in group.attrs:
            raise ModelFileError(f"{path}: an HDF5 file, but not a Keras model (no layer_names attribute)")
        names = group.attrs["layer_names"]
        if len(names) > 64:
            raise ModelFileError(f"{path}: {len(names)} layers; the tutorial's network has 8")
        arrays = _weights_from_h5_group(path, group, [_text(n) for n in names])
    return arrays, info


def _json(path: Path, raw: Any, what: str) -> Any:
    text = raw if isinstance(raw, (str, bytes)) else str(raw)
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{path}: {what} is {len(text):,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ModelFileError(f"{path}: {what} is not valid JSON (or nested too deeply)") from None


def _zip_member(path: Path, z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """One member, refused before reading when it declares more than limit bytes (and read capped)."""
    info = z.getinfo(name)
    if info.file_size > limit:
        raise ModelFileError(f"{path}: {name} declares {info.file_size:,} bytes, over the {limit:,}-byte limit")
    with z.open(info) as member:
        try:
            return read_bounded(member, limit)
        except LimitExceeded as e:
            raise ModelFileError(f"{path}: {name}: {e}") from None


def _read_keras_zip(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    import io

    try:
        with zipfile.ZipFile(path) as z:
            config = _json(path, _zip_member(path, z, "config.json", MAX_CONFIG_BYTES), "config.json")
            meta = _json(path, _zip_member(path, z, "metadata.json", MAX_CONFIG_BYTES), "metadata.json") \
                if "metadata.json" in z.namelist() else {}
            check_config(path, config)
            weights = _zip_member(path, z, "model.weights.h5", MAX_WEIGHTS_BYTES)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, OSError, EOFError, NotImplementedError,
            RuntimeError, ValueError) as e:
        raise ModelFileError(f"{path}: not a Keras 3 .keras archive, or truncated ({_brief(str(e), 120)})") from None
    import h5py

    try:
        with h5py.File(io.BytesIO(weights), "r") as f:
            arrays = _keras3_variables(path, f)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: model.weights.h5 is damaged ({_brief(str(e), 120)})") from None
    version = meta.get("keras_version", "unknown") if isinstance(meta, dict) else "unknown"
    return arrays, {"keras_version": str(version)[:40], "format": "keras"}


def keras_to_torch_layout(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The tutorial's Keras weights (in layer order) as digitlab's state dict."""
    names = ["conv2d", "conv2d_1", "conv2d_2", "dense", "dense_1"]
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        kernel, bias = arrays[2 * i], arrays[2 * i + 1]
        if kernel.ndim == 4:
            out[f"{name}.weight"] = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif name == "dense":
            # Keras flattened (h, w, c); PyTorch flattens (c, h, w): reorder the rows, then transpose.
            out[f"{name}.weight"] = kernel.reshape(3, 3, 64, 64).transpose(2, 0, 1, 3).reshape(576, 64).T
        else:
            out[f"{name}.weight"] = kernel.T
        out[f"{name}.bias"] = bias
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def read_keras(path: str | Path) -> tuple[ArchConfig, dict[str, np.ndarray], dict[str, Any]]:
    """A Keras .h5 (tf.keras 2 or Keras 3), .weights.h5 or .keras file of the tutorial's network:
    (architecture, state dict in digitlab's layout (float32), metadata for a model file).

    Raises ModelFileError naming the file and the layer, setting or weight that differs."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK"):
        arrays, info = _read_keras_zip(path)
    elif magic == b"\x89HDF\r\n\x1a\n":
        arrays, info = _read_h5(path)
    else:
        raise ModelFileError(f"{path}: neither an HDF5 (.h5) nor a zip (.keras) file; expected a Keras model")
    if len(arrays) != len(KERAS_SHAPES):
        raise ModelFileError(f"{path}: {len(arrays)} weights; the tutorial's network has {len(KERAS_SHAPES)}")
    arch = ArchConfig()
    meta = {"architecture": "tutorial", "arch_config": arch.to_dict(), "dataset": "mnist",
            "classes": [str(i) for i in range(10)], "source": {"keras_file": path.name, **info}}
    return arch, keras_to_torch_layout(arrays), meta
