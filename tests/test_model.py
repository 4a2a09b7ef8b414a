from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab.errors import ModelFileError
from digitlab.model import ARCHITECTURES, ArchConfig, build_torch, count_params, numpy_forward, summary


def test_tutorial_parameter_count():
    assert count_params(ArchConfig()) == 93322
    net = build_torch(ArchConfig())
    assert sum(p.numel() for p in net.parameters()) == 93322


def test_summary_matches_tutorial_table():
    text = summary(ArchConfig())
    for row in [("conv2d (Conv2D)", "(None, 26, 26, 32)", "320"),
                ("max_pooling2d (MaxPooling2D)", "(None, 13, 13, 32)", "0"),
                ("conv2d_1 (Conv2D)", "(None, 11, 11, 64)", "18,496"),
                ("max_pooling2d_1 (MaxPooling2D)", "(None, 5, 5, 64)", "0"),
                ("conv2d_2 (Conv2D)", "(None, 3, 3, 64)", "36,928"),
                ("flatten (Flatten)", "(None, 576)", "0"),
                ("dense (Dense)", "(None, 64)", "36,928"),
                ("dense_1 (Dense)", "(None, 10)", "650")]:
        line = next(line for line in text.splitlines() if line.startswith(row[0] + " "))
        assert line.split()[2:] == [*row[1].split(), row[2]] or (row[1] in line and line.endswith(row[2]))
    assert "Total params: 93,322" in text and "Trainable params: 93,322" in text
    assert "Non-trainable params: 0" in text


def test_batchnorm_summary_counts_non_trainable():
    text = summary(ARCHITECTURES["wide-bn"])
    assert "BatchNormalization" in text and "Non-trainable params: 448" in text  # 2 x (32+64+128)


def test_keras_default_initialisation():
    torch.manual_seed(0)
    net = build_torch(ArchConfig())
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            fan_in = p[0].numel()
            fan_out = p.shape[0] * (p[0, 0].numel() if p.dim() == 4 else 1)
            bound = (6 / (fan_in + fan_out)) ** 0.5  # Glorot uniform
            assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound, name


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_numpy_forward_equals_torch(arch):
    cfg = ARCHITECTURES[arch]
    torch.manual_seed(1)
    net = build_torch(cfg)
    for m in net.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = np.random.default_rng(0).random((37, 28, 28), dtype=np.float32)
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    with torch.no_grad():
        expected = net(torch.from_numpy(x).unsqueeze(1)).numpy()
    assert np.abs(numpy_forward(cfg, weights, x) - expected).max() < 1e-4


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_onnx_graph_equals_numpy(arch):
    """Every architecture (strided first conv, batch norm...) runs the same on onnxruntime as in NumPy."""
    pytest.importorskip("onnxruntime")
    from digitlab.modelfile import DigitModel

    cfg = ARCHITECTURES[arch]
    torch.manual_seed(2)
    weights = {k: v.numpy() for k, v in build_torch(cfg).state_dict().items()}
    x = np.random.default_rng(1).random((9, 28, 28), dtype=np.float32)
    ort_probs = DigitModel(cfg, weights, {}, backend="onnxruntime").predict(x)
    np_probs = DigitModel(cfg, weights, {}, backend="numpy").predict(x)
    assert np.abs(ort_probs - np_probs).max() < 1e-5


def test_strided_stem_shapes():
    text = summary(ARCHITECTURES["lean-bn"])
    assert "(None, 13, 13, 32)" in text and "(None, 3, 3, 128)" in text
    with pytest.raises(ModelFileError, match="stem_stride must be >= 1"):
        summary(ArchConfig(stem_stride=0))
