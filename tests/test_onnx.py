"""ONNX out (digitlab.onnx): the graph from the layer table, float32 and int8, checked with onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab import modelfile
from digitlab.errors import ModelFileError
from digitlab.model import ARCHITECTURES, build_torch
from digitlab.onnx import export_onnx
from tests.conftest import run_cli

ort = pytest.importorskip("onnxruntime")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The tutorial's net with Keras's random initialisation, saved as a model file: agreement tests
    need the arithmetic, not accuracy."""
    torch.manual_seed(3)
    cfg = ARCHITECTURES["tutorial"]
    weights = {k: v.numpy() for k, v in build_torch(cfg).state_dict().items()}
    return modelfile.save(tmp_path_factory.mktemp("onnx") / "m.safetensors", weights, {
        "architecture": "tutorial", "arch_config": cfg.to_dict(), "dataset": "mnist",
        "classes": [str(i) for i in range(10)]})


def test_onnx_export_matches(model_path, mnist, tmp_path):
    model = modelfile.load(model_path)
    path = export_onnx(model, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one file, no sidecar, no temporary
    session = _session(path)
    assert session.get_inputs()[0].name == "image" and session.get_inputs()[0].shape[1:] == [1, 28, 28]
    x = mnist.test_images[:2000, None].astype(np.float32) / 255
    got = session.run(None, {"image": x})[0]
    model.backend = "numpy"
    ours = model.predict(mnist.test_images[:2000])
    assert np.abs(got - ours).max() < 1e-5
    assert session.run(None, {"image": x[:1]})[0].shape == (1, 10)  # dynamic batch
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_cli(model_path, tmp_path):
    proc = run_cli("export", model_path, "--onnx", tmp_path / "cli.onnx", check=True)
    assert "cli.onnx" in proc.stdout and (tmp_path / "cli.onnx").stat().st_size > 4 * 93322


def test_int8_export(model_path, mnist, tmp_path):
    """Static QDQ quantization calibrated on training images: int8 weights, quantized convs and matmuls,
    float softmax; its probabilities stay close to float32's."""
    import onnx

    model = modelfile.load(model_path)
    path = export_onnx(model, tmp_path / "q.onnx", int8=True, calibration=mnist.train_images[:256])
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 10 and ops[-1] == "Softmax"
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    x = mnist.test_images[:1000, None].astype(np.float32) / 255
    q = _session(path).run(None, {"image": x})[0]
    f = model.predict(mnist.test_images[:1000])
    assert q.shape == (1000, 10) and np.allclose(q.sum(1), 1, atol=1e-4)
    assert np.abs(q - f).max() < 0.05
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]  # the quantizer's temporary files are gone


def test_int8_calibration_checked(model_path):
    with pytest.raises(ModelFileError, match=r"int8 calibration: expected images \(N, 28, 28\)"):
        export_onnx(modelfile.load(model_path), "/nonexistent/q.onnx", int8=True, calibration=np.zeros((4, 32, 32)))


@pytest.mark.slow  # loads all of MNIST in a fresh process: ~9 s under load
def test_int8_cli_calibrates_on_training_images(model_path, tmp_path):
    proc = run_cli("export", model_path, "--onnx", tmp_path / "q.onnx", "--int8", check=True)
    assert "q.onnx" in proc.stdout
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "QuantizeLinear" in ops


def test_default_calibration_is_training_images(mnist):
    from digitlab.onnx import default_calibration

    calib = default_calibration("mnist", count=64)
    assert calib.shape == (64, 28, 28) and calib.dtype == np.uint8
    train = {im.tobytes() for im in mnist.train_images}
    assert all(im.tobytes() in train for im in calib)


@pytest.mark.slow
def test_int8_accuracy_close_to_float(trained_model, mnist, tmp_path):
    """On a trained model, int8 loses at most 0.3 points of test accuracy (issue 16 targets 0.05;
    benchmarks/int8.py measures it)."""
    path = export_onnx(trained_model, tmp_path / "q.onnx", int8=True)
    x = mnist.test_images[:, None].astype(np.float32) / 255
    q = np.concatenate([_session(path).run(None, {"image": x[i:i + 2500]})[0] for i in range(0, 10000, 2500)])
    f = trained_model.predict(mnist.test_images)
    acc_q, acc_f = (q.argmax(1) == mnist.test_labels).mean(), (f.argmax(1) == mnist.test_labels).mean()
    assert acc_q >= acc_f - 0.003, (acc_q, acc_f)
