from __future__ import annotations

import numpy as np
import pytest
import torch

from digitlab.errors import ModelFileError
from digitlab.model import (
    ARCHITECTURES,
    LAYER_KINDS,
    ArchConfig,
    LayerKind,
    build_torch,
    count_params,
    forward_bytes,
    layer_specs,
    numpy_forward,
    param_shapes,
    summary,
)


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


# --- the layer-kind table ----------------------------------------------------------------------------

def test_every_kind_the_architectures_use_is_in_the_table():
    used = {kind for cfg in ARCHITECTURES.values() for _, kind, _ in layer_specs(cfg)}
    used |= {kind for _, kind, _ in layer_specs(ArchConfig(dropout=0.5, batchnorm=True))}
    assert used == set(LAYER_KINDS)


@pytest.mark.parametrize("consumer", ["param_shapes", "build_torch", "summary", "numpy_forward", "onnx_model"])
def test_unknown_layer_kind_raises_in_every_consumer(consumer, monkeypatch):
    """A layer kind the table lacks is an error wherever the layer list is read, never skipped."""
    import digitlab.model as model_module
    pytest.importorskip("onnx")
    import digitlab.onnx as onnx_module

    cfg = ArchConfig()
    layers = layer_specs(cfg)
    layers.insert(3, ("mystery", "Conv3D", {}))
    monkeypatch.setattr(model_module, "layer_specs", lambda c: list(layers))
    weights: dict[str, np.ndarray] = {}  # the unknown layer must be refused before any weight is needed
    calls = {
        "param_shapes": lambda: model_module.param_shapes(cfg),
        "build_torch": lambda: model_module.build_torch(cfg),
        "summary": lambda: model_module.summary(cfg),
        "numpy_forward": lambda: model_module.numpy_forward(cfg, weights, np.zeros((1, 28, 28), np.float32)),
        "onnx_model": lambda: onnx_module.onnx_model(cfg, weights),
    }
    with pytest.raises(ValueError, match="unknown layer kind 'Conv3D'"):
        calls[consumer]()


def test_layer_kind_entries_are_complete():
    """Every field of LayerKind is required: an entry missing one cannot be built."""
    with pytest.raises(TypeError):
        LayerKind(params=lambda s: {}, torch=lambda nn, s: None)  # type: ignore[call-arg]


# --- architecture settings from files ------------------------------------------------------------------

@pytest.mark.parametrize(("change", "field"), [
    ({"pool_after": None}, "pool_after"), ({"stem_kernel": "3"}, "stem_kernel"), ({"convs": [32, "64"]}, "convs"),
    ({"convs": []}, "convs"), ({"convs": [10**9]}, "convs"), ({"batchnorm": 1}, "batchnorm"),
    ({"dense": True}, "dense"), ({"dropout": 1.5}, "dropout"), ({"classes": 0}, "classes"),
    ({"pool_after": [5]}, "pool_after"), ({"stem_stride": 2.0}, "stem_stride"),
])
def test_arch_settings_checked_by_name(change, field):
    with pytest.raises(ModelFileError, match=field):
        ArchConfig.from_dict({**ArchConfig().to_dict(), **change})


def test_arch_too_big_or_not_an_object():
    with pytest.raises(ModelFileError, match="parameters, over the"):
        ArchConfig.from_dict({"convs": [4096] * 4, "pool_after": []})
    with pytest.raises(ModelFileError, match="expected an object of settings, got list"):
        ArchConfig.from_dict([1, 2])
    with pytest.raises(ModelFileError, match="shrinks a 28x28 image to nothing"):
        ArchConfig.from_dict({"convs": [8] * 16, "pool_after": []})
    for name, cfg in ARCHITECTURES.items():
        assert ArchConfig.from_dict(cfg.to_dict()) == cfg, name


WIDE_NETS = {"wide-1x1": ArchConfig(convs=[1024], stem_kernel=1, pool_after=[], dense=1),
             "wide-im2col": ArchConfig(convs=[256, 64], stem_kernel=1, pool_after=[1], dense=1)}


@pytest.mark.parametrize("cfg", [*ARCHITECTURES.values(), *WIDE_NETS.values()], ids=[*ARCHITECTURES, *WIDE_NETS])
def test_forward_bytes_is_what_numpy_forward_holds(cfg):
    """forward_bytes, from the architecture alone, within 0.8-1.6x of numpy_forward's measured peak per image
    (NumPy's allocations are traced by tracemalloc): what predict sizes its batches by."""
    import tracemalloc

    weights = {k: np.zeros(s, np.float32) for k, (s, _) in param_shapes(cfg).items()}
    x = np.zeros((4, 28, 28), np.float32)
    tracemalloc.start()
    try:
        numpy_forward(cfg, weights, x)
        peak = tracemalloc.get_traced_memory()[1] / len(x)
    finally:
        tracemalloc.stop()
    assert 0.8 <= peak / forward_bytes(cfg) <= 1.6, (peak, forward_bytes(cfg))
