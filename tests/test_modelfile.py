from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

import digitlab
from digitlab import modelfile
from digitlab.errors import ModelFileError
from digitlab.model import ArchConfig, build_torch


@pytest.fixture
def model_path(tmp_path):
    net = build_torch(ArchConfig())
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    return modelfile.save(tmp_path / "m.safetensors", weights, {
        "architecture": "tutorial", "arch_config": ArchConfig().to_dict(), "dataset": "mnist",
        "classes": [str(i) for i in range(10)]})


def test_roundtrip_and_no_pickle(model_path):
    raw = model_path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    meta = json.loads(header["__metadata__"]["digitlab"])
    assert meta["format"] == "digitlab-model" and meta["format_version"] == 1 and meta["digitlab_version"]
    assert b"\x80\x04" not in raw[:16]  # safetensors, not a pickle stream
    m = digitlab.load(model_path)
    assert m.param_count == 93322
    probs = m.predict(np.zeros((3, 28, 28), np.uint8))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_predict_inputs(model_path):
    m = digitlab.load(model_path)
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    assert np.allclose(m.predict(x), m.predict(x.astype(np.float32) / 255), atol=1e-6)
    assert np.allclose(m.predict(x[0]), m.predict(x[:1]))
    with pytest.raises(ValueError, match=r"expected shape \(N, 28, 28\)"):
        m.predict(np.zeros((2, 28, 27)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.predict(np.full((1, 28, 28), 3.0))
    with pytest.raises(TypeError):
        m.predict(42)


def test_truncated_file(model_path):
    model_path.write_bytes(model_path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"m\.safetensors: not a valid model file: truncated or corrupt"):
        digitlab.load(model_path)


def test_garbage_and_missing(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"this is not a model at all" * 50)
    with pytest.raises(ModelFileError, match="junk.safetensors: not a valid model file"):
        digitlab.load(p)
    with pytest.raises(ModelFileError, match="no such model file"):
        digitlab.load(tmp_path / "nope.safetensors")


def test_other_tools_files_are_named_not_unpickled(tmp_path):
    """A PyTorch checkpoint is refused without being unpickled; ONNX and SavedModel folders get a hint."""
    import torch

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    pt = tmp_path / "model.pt"
    torch.save({"conv.weight": torch.zeros(2), "x": Boom()}, pt)
    with pytest.raises(ModelFileError, match=r"model\.pt: not a digitlab model file.*pickle.*never loads"):
        digitlab.load(pt)
    assert not (tmp_path / "pwned").exists()
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch" * 10)
    with pytest.raises(ModelFileError, match=r"m\.onnx: .*ONNX is an export format"):
        digitlab.load(onnx)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ModelFileError, match="saved: is a directory.*SavedModel"):
        digitlab.load(saved)


def test_foreign_safetensors(tmp_path):
    p = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(p))
    with pytest.raises(ModelFileError, match="not a digitlab model"):
        digitlab.load(p)


def _rewrite(path, change):
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    raw = path.read_bytes()
    meta = json.loads(json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["digitlab"])
    arrays, meta = change(arrays, meta)
    save_file(arrays, str(path), metadata={"digitlab": json.dumps(meta)})


def test_too_new(model_path):
    _rewrite(model_path, lambda a, m: (a, {**m, "format_version": 99, "digitlab_version": "9.0"}))
    with pytest.raises(ModelFileError, match="format version 99 is newer.*digitlab 9.0.*upgrade"):
        digitlab.load(model_path)


def test_wrong_shapes_and_missing_tensors(model_path, tmp_path):
    _rewrite(model_path, lambda a, m: ({**a, "dense.bias": np.zeros(65, np.float32)}, m))
    with pytest.raises(ModelFileError, match=r"dense.bias has shape \(65,\), expected \(64,\)"):
        digitlab.load(model_path)
    _rewrite(model_path, lambda a, m: ({k: v for k, v in a.items() if k != "conv2d.bias"}, m))
    with pytest.raises(ModelFileError, match=r"missing \['conv2d.bias'\]"):
        digitlab.load(model_path)


def test_nan_weights_refused(model_path):
    _rewrite(model_path, lambda a, m: ({**a, "dense.bias": np.full(64, np.nan, np.float32)}, m))
    with pytest.raises(ModelFileError, match="NaN"):
        digitlab.load(model_path)


def test_save_is_atomic(tmp_path, model_path, monkeypatch):
    """A failed write leaves the old file as it was and no temporary file behind."""
    before = model_path.read_bytes()
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        modelfile.save(model_path, {"x": np.zeros(1)}, {})
    assert model_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
