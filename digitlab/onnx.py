"""ONNX out: the network as an ONNX graph built from the layer table (no torch), float32 or int8.

The graph's input is ``image`` float32 (N, 1, 28, 28) in [0, 1], ink bright; its output
``probabilities`` (N, classes), softmax included (in-process, also ``logits``, the softmax's input); the
batch dimension is dynamic. int8 files are
onnxruntime's static quantization (QDQ format, per-channel int8 weights, uint8 activations), calibrated
on training images. Imports outward only (model, data, _io, errors); the model file reader uses
``onnx_model`` for its onnxruntime backend.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab._io import atomic_write_bytes
from digitlab.errors import ModelFileError
from digitlab.model import ArchConfig, resolved_layers

if TYPE_CHECKING:
    from digitlab.modelfile import DigitModel

CALIBRATION_IMAGES = 512  # training images the int8 ranges are measured on (min/max per tensor)
CALIBRATION_BATCH = 64


def onnx_model(arch: ArchConfig, weights: dict[str, np.ndarray], logits: bool = False):  # -> onnx.ModelProto
    """The network as an ONNX graph (opset 17, IR 8), built straight from the layer list and the weights:
    input ``image`` (N, 1, 28, 28) float32 in [0, 1], output ``probabilities`` (N, classes); with logits=True
    a second output ``logits`` (N, classes), the softmax's input (DigitModel's own session asks for it; the
    exported file has probabilities only, as before)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in weights.items()]
    x = "image"
    for name, _, spec, s in resolved_layers(arch):
        op = spec.onnx(s)
        if op is None:  # identity at inference (Dropout)
            continue
        op_type, suffixes, attrs = op
        y = f"{name}_out"
        nodes.append(helper.make_node(op_type, [x, *(f"{name}.{t}" for t in suffixes)], [y], name=name, **attrs))
        x = y
    nodes.append(helper.make_node("Softmax", [x], ["probabilities"], name="softmax", axis=1))
    outputs = ["probabilities"]
    if logits:
        nodes.append(helper.make_node("Identity", [x], ["logits"], name="logits"))
        outputs.append("logits")
    graph = helper.make_graph(
        nodes, "digitlab", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", arch.classes]) for name in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="digitlab")
    model.ir_version = 8  # readable by onnxruntime releases from 1.14 on
    return model


def export_onnx(model: DigitModel, out: str | Path, int8: bool = False, calibration: np.ndarray | None = None) -> Path:
    """Write the model as one ONNX file (no sidecar), atomically; returns out.

    int8: onnxruntime static quantization, calibrated on ``calibration`` (N, 28, 28) images, uint8 0..255
    or float 0..1, ink bright; by default CALIBRATION_IMAGES training images of the model's dataset.
    Raises ModelFileError when onnx (or, for int8, onnxruntime) is not installed."""
    try:
        import onnx
    except ImportError:
        raise ModelFileError("ONNX export needs the onnx package: pip install 'digitlab[onnx]'") from None
    proto = onnx_model(model.arch, model.weights)
    onnx.checker.check_model(proto)
    payload = proto.SerializeToString()
    if int8:
        if calibration is None:
            calibration = default_calibration(model.metadata.get("dataset", "mnist"))
        payload = quantize_int8(payload, calibration)
    atomic_write_bytes(Path(out), payload)
    return Path(out)


def default_calibration(dataset: str, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """count training images (uint8 (count, 28, 28)) drawn without replacement with a fixed seed:
    never test images, so the int8 model's test accuracy stays an honest measurement."""
    from digitlab.data import load_mnist

    train = load_mnist(dataset=dataset).train_images
    return train[np.random.default_rng(seed).choice(len(train), count, replace=False)]


def quantize_int8(float_model: bytes, calibration: np.ndarray) -> bytes:
    """A float ONNX model (bytes) quantized to int8 (QDQ, per-channel weights) with onnxruntime,
    activation ranges measured (min/max) on the calibration images; the softmax stays float."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ModelFileError("int8 export needs onnxruntime: pip install 'digitlab[onnx]'") from None
    x = np.asarray(calibration)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) == 0:
        raise ModelFileError(f"int8 calibration: expected images (N, 28, 28), got shape {x.shape}")
    x = (x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32))[:, None]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([x[i:i + CALIBRATION_BATCH] for i in range(0, len(x), CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="digitlab-int8-") as tmp:
        src, prep, dst = (Path(tmp) / n for n in ("float.onnx", "prep.onnx", "int8.onnx"))
        src.write_bytes(float_model)
        quant_pre_process(str(src), str(prep))
        quantize_static(str(prep), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=["softmax"])
        return dst.read_bytes()
