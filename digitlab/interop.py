"""Keras models in (no TensorFlow needed), ONNX out.

Keras files are read with h5py and zipfile, following the file's own ``layer_names`` and
``weight_names`` attributes, so both the tf.keras 2.x layout (``model_weights/conv2d/conv2d/kernel:0``)
and the Keras 3 one (``model_weights/conv2d/sequential/conv2d/kernel``) load, as do a Keras 3
``.keras`` zip (``model.weights.h5`` with ``layers/<class key>/vars/<i>``) and a Keras 3 ``.weights.h5``.

Layouts differ: Keras conv kernels are (h, w, in, out) where PyTorch's are (out, in, h, w); Dense
kernels are (in, out) where Linear's are (out, in); and Keras flattens channels-last, so the first
Dense layer's rows are permuted from (h, w, c) to PyTorch's (c, h, w) order.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ModelFileError
from digitlab.model import ArchConfig
from digitlab.modelfile import DigitModel, check_weights, save

TUTORIAL_LAYERS = ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten", "Dense", "Dense"]
KERAS_SHAPES = [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (3, 3, 64, 64), (64,), (576, 64), (64,), (64, 10), (10,)]
# Keras 3 (.keras, and .weights.h5 from save_weights) files each layer's variables under a key made from
# its class, numbered in model order ("conv2d", "conv2d_1"...), never from its name: a model built second
# in a notebook (layers conv2d_3...) or with names of its own is stored under these same five keys.
KERAS3_KEYS = ["conv2d", "conv2d_1", "conv2d_2", "dense", "dense_1"]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_config(path: Path, config: dict[str, Any]) -> None:
    """The model config must describe the tutorial's network: layer types, sizes and activations."""
    cfg = config.get("config", {})
    layers = cfg.get("layers", cfg) if isinstance(cfg, dict) else cfg
    if not isinstance(layers, list):
        raise ModelFileError(f"{path}: model config has no layer list (class {config.get('class_name')!r})")
    found = [layer.get("class_name") for layer in layers if layer.get("class_name") != "InputLayer"]
    if found != TUTORIAL_LAYERS:
        raise ModelFileError(f"{path}: architecture {' -> '.join(map(str, found))} is not the tutorial's; "
                             f"expected {' -> '.join(TUTORIAL_LAYERS)}")
    act = [(lay["class_name"], lay["config"].get("activation")) for lay in layers
           if lay.get("class_name") in ("Conv2D", "Dense")]
    want = [("Conv2D", "relu")] * 3 + [("Dense", "relu"), ("Dense", "softmax")]
    if act != want:
        raise ModelFileError(f"{path}: activations {act} differ from the tutorial's {want}")


def _weights_from_h5_group(path: Path, group, layer_names: list[str]) -> list[np.ndarray]:
    """Kernels and biases in layer order, located through each layer's weight_names attribute."""
    arrays = []
    for name in layer_names:
        layer = group[name]
        for wname in layer.attrs.get("weight_names", []):
            wname = _text(wname)
            if wname not in layer:
                raise ModelFileError(f"{path}: layer {name} lists weight {wname!r}, which the file lacks")
            arrays.append(np.asarray(layer[wname], dtype=np.float32))
    return arrays


def _read_h5(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"{path}: not a readable HDF5 file, or truncated ({e})") from None
    with f:
        info = {"keras_version": _text(f.attrs.get("keras_version", "unknown")), "format": "h5"}
        if "model_config" in f.attrs:
            _check_config(path, json.loads(_text(f.attrs["model_config"])))
        group = f["model_weights"] if "model_weights" in f else f  # whole model, or save_weights() output
        if "layer_names" not in group.attrs and "layers" in f:  # Keras 3 save_weights(): a .weights.h5
            return _keras3_variables(path, f), {**info, "format": "weights.h5"}
        if "layer_names" not in group.attrs:
            raise ModelFileError(f"{path}: an HDF5 file, but not a Keras model (no layer_names attribute)")
        arrays = _weights_from_h5_group(path, group, [_text(n) for n in group.attrs["layer_names"]])
    return arrays, info


def _read_keras_zip(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in z.namelist() else {}
            weights = z.read("model.weights.h5")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        raise ModelFileError(f"{path}: not a Keras 3 .keras archive, or truncated ({e})") from None
    _check_config(path, config)
    try:
        with h5py.File(io.BytesIO(weights), "r") as f:
            arrays = _keras3_variables(path, f)
    except OSError as e:
        raise ModelFileError(f"{path}: model.weights.h5 is damaged ({e})") from None
    return arrays, {"keras_version": meta.get("keras_version", "unknown"), "format": "keras"}


def _keras3_variables(path: Path, f) -> list[np.ndarray]:
    """Kernels and biases in layer order from a Keras 3 weights file (layers/<key>/vars/<i>)."""
    arrays = []
    for key in KERAS3_KEYS:
        if f"layers/{key}/vars" not in f:
            raise ModelFileError(f"{path}: Keras 3 weights without layers/{key}/vars; expected the tutorial's "
                                 f"layers {', '.join(KERAS3_KEYS)}")
        variables = f[f"layers/{key}/vars"]
        arrays += [np.asarray(variables[str(i)], dtype=np.float32) for i in range(len(variables))]
    return arrays


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


def load_keras(path: str | Path) -> DigitModel:
    """A Keras .h5 (tf.keras 2 or Keras 3) or .keras file of the tutorial's network, as a DigitModel."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"PK"):
        arrays, info = _read_keras_zip(path)
    elif magic == b"\x89HDF\r\n\x1a\n":
        arrays, info = _read_h5(path)
    else:
        raise ModelFileError(f"{path}: neither an HDF5 (.h5) nor a zip (.keras) file; expected a Keras model")
    shapes = [tuple(a.shape) for a in arrays]
    if shapes != KERAS_SHAPES:
        raise ModelFileError(f"{path}: weight shapes {shapes} are not the tutorial's {KERAS_SHAPES}")
    arch = ArchConfig()
    weights = keras_to_torch_layout(arrays)
    check_weights(path, arch, weights)
    meta = {"architecture": "tutorial", "arch_config": arch.to_dict(), "dataset": "mnist",
            "classes": [str(i) for i in range(10)], "source": {"keras_file": path.name, **info}}
    return DigitModel(arch, weights, meta)


def import_keras(path: str | Path, out: str | Path) -> Path:
    """Convert a Keras file into a digitlab model file."""
    model = load_keras(path)
    from digitlab import __version__

    meta = {k: v for k, v in model.metadata.items() if k not in ("format", "format_version", "digitlab_version")}
    meta["source"]["imported_by"] = f"digitlab {__version__}"
    return save(out, model.weights, meta)


def export_onnx(model: DigitModel, out: str | Path) -> Path:
    """An ONNX file with input ``image`` float32 (N, 1, 28, 28) in [0, 1], ink bright, and output
    ``probabilities`` (N, 10), softmax included; the batch dimension is dynamic. One file, no sidecar."""
    try:
        import onnx
    except ImportError:
        raise ModelFileError("ONNX export needs the onnx package: pip install 'digitlab[onnx]'") from None
    from digitlab._io import atomic_write_bytes

    proto = onnx_model(model.arch, model.weights)
    onnx.checker.check_model(proto)
    atomic_write_bytes(Path(out), proto.SerializeToString())
    return Path(out)


def onnx_model(arch: ArchConfig, weights: dict[str, np.ndarray]):  # -> onnx.ModelProto
    """The network as an ONNX graph, built straight from the layer list and the weights (no torch):
    input ``image`` (N, 1, 28, 28) float32 in [0, 1], output ``probabilities`` (N, classes)."""
    from onnx import TensorProto, helper, numpy_helper

    from digitlab.model import layer_specs

    nodes, inits = [], [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in weights.items()]
    x = "image"
    for name, kind, s in layer_specs(arch):
        y = f"{name}_out"
        if kind == "Conv2D":
            nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [y],
                                          kernel_shape=[s["kernel"]] * 2, strides=[s["stride"]] * 2))
        elif kind == "BatchNormalization":
            nodes.append(helper.make_node("BatchNormalization", [x, f"{name}.weight", f"{name}.bias",
                                          f"{name}.running_mean", f"{name}.running_var"], [y], epsilon=1e-3))
        elif kind == "ReLU":
            nodes.append(helper.make_node("Relu", [x], [y]))
        elif kind == "MaxPooling2D":
            nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[s["size"]] * 2, strides=[s["size"]] * 2))
        elif kind == "Flatten":
            nodes.append(helper.make_node("Flatten", [x], [y], axis=1))  # NCHW order, as PyTorch flattens
        elif kind == "Dropout":
            continue
        elif kind == "Dense":
            nodes.append(helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], transB=1))
        x = y
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "digitlab", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", arch.classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="digitlab")
    model.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    return model
