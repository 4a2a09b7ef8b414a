from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import digitlab
from digitlab import modelfile
from digitlab.errors import ImageError, ModelFileError
from digitlab.model import ARCHITECTURES, ArchConfig, build_torch, numpy_forward

CALIBRATION = {"method": "energy", "threshold": 6.5, "target_frr": 0.008, "source": "test"}


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
    with pytest.raises(ImageError, match=r"shape \(2, 28, 27\); expected"):
        m.predict(np.zeros((2, 28, 27)))
    with pytest.raises(ImageError, match=r"float pixels must lie in 0..1"):
        m.predict(np.full((1, 28, 28), 3.0))
    with pytest.raises(ImageError, match="expected a NumPy array"):
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


def test_a_header_length_ending_in_0x80_is_no_pickle(tmp_path, model_path):
    """safetensors files start with their header's length; one of 0x..80 bytes (a trained model's header
    was 0xa80) was taken for a pickle's PROTO opcode and the file refused. A real pickle still is."""
    import pickle
    import struct

    m = digitlab.load(model_path)
    for pad in range(0, 300):
        out = modelfile.save(tmp_path / "p.safetensors", m.weights, {**m.metadata, "note": "x" * pad})
        if struct.unpack("<Q", out.read_bytes()[:8])[0] & 0xFF == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert digitlab.load(out).weights.keys() == m.weights.keys()
    pk = tmp_path / "q.safetensors"
    pk.write_bytes(pickle.dumps({"conv.weight": [0.0] * 10}, protocol=2))
    with pytest.raises(ModelFileError, match="pickle"):
        digitlab.load(pk)


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


def _rewrite(path, change, rehash: bool = True):
    """Rewrite a model file as another writer might: change(arrays, meta) -> (arrays, meta). With rehash,
    tensors_sha256 is recomputed (a file written like this, not one damaged after writing)."""
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    raw = path.read_bytes()
    meta = json.loads(json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["digitlab"])
    arrays, meta = change(arrays, meta)
    if rehash and isinstance(meta, dict) and "tensors_sha256" in meta:
        meta["tensors_sha256"] = modelfile.tensors_sha256(arrays)
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


# --- files that lie (issue 13, section 3) ----------------------------------------------------------------

def _header(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_raw(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def _weights(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file we wrote must carry its checksum
        return digitlab.load(path).weights


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.bool_, np.float16, np.float64])
def test_only_float32_weights(model_path, dtype):
    """int8/int32/bool weights used to load and answer nonsense: only the declared F32 is accepted."""
    _rewrite(model_path, lambda a, m: ({**a, "conv2d.weight": a["conv2d.weight"].astype(dtype)}, m))
    with pytest.raises(ModelFileError, match=r"m\.safetensors: tensor conv2d.weight is stored as '[A-Z0-9]+'; .*F32"):
        digitlab.load(model_path)


def test_flipped_exponent_bit_caught_by_checksum(model_path):
    """One flipped exponent bit turned a weight into ~1e38 and answered '0, confidence 1.0'."""
    raw = bytearray(model_path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    raw[8 + n + 4 * 100 + 3] ^= 0x40  # bit 30 of the 101st float: the top exponent bit
    model_path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"m\.safetensors: the weights' SHA-256 differs.*tensors_sha256"):
        digitlab.load(model_path)


def test_random_single_bit_flips_refused_or_equal(model_path):
    """40 of 40 random single-bit flips used to be accepted; now each is refused, or loads the same weights."""
    original = _weights(model_path)
    raw = model_path.read_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"refused": 0, "equal": 0}
    for bit in rng.choice(8 * len(raw), 40, replace=False):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        model_path.write_bytes(bytes(flipped))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = digitlab.load(model_path).weights
        except ModelFileError as e:
            assert "\n" not in str(e) and len(str(e)) < 500
            outcomes["refused"] += 1
            continue
        assert all(np.array_equal(got[k], original[k]) for k in original), f"bit {bit} changed the weights"
        outcomes["equal"] += 1
    assert outcomes["refused"] >= 30, outcomes  # most bits are weights, all guarded by the checksum


def test_file_without_checksum_loads_with_warning(model_path):
    _rewrite(model_path, lambda a, m: (a, {k: v for k, v in m.items() if k != "tensors_sha256"}))
    with pytest.warns(UserWarning, match=r"m\.safetensors: no tensors_sha256"):
        m = digitlab.load(model_path)
    assert m.param_count == 93322


def test_saved_checksum_is_of_the_tensor_data(model_path):
    header, data = _header(model_path)
    meta = json.loads(header["__metadata__"]["digitlab"])
    assert meta["tensors_sha256"] == hashlib.sha256(data).hexdigest()  # safetensors stores tensors in name order


def test_huge_header_refused_before_reading(tmp_path):
    """A header declaring 67 MB (a million tensors) used to take 2 GB and print a 10.9 MB line."""
    p = tmp_path / "big.safetensors"
    with open(p, "wb") as f:
        f.write((67_000_000).to_bytes(8, "little"))
        f.truncate(67_000_008)  # sparse: nothing is written
    with pytest.raises(ModelFileError) as e:
        digitlab.load(p)
    assert re.search(r"big\.safetensors: .*header declares 67,000,000 bytes, over the 1,048,576-byte limit",
                     str(e.value))
    assert len(str(e.value)) < 400


def test_size_must_match_the_architecture(model_path):
    """A sparse 3 GB file was read whole before any check; now its size is compared first."""
    size = model_path.stat().st_size
    with open(model_path, "r+b") as f:
        f.truncate(3 * 1024**3)  # sparse: the disk holds only the original bytes
    with pytest.raises(ModelFileError, match=r"m\.safetensors: .*has trailing bytes: 3,221,225,472 bytes, expected"):
        digitlab.load(model_path)
    with open(model_path, "r+b") as f:
        f.truncate(size - 4)
    with pytest.raises(ModelFileError, match=r"truncated or corrupt \(it truncated"):
        digitlab.load(model_path)


def test_declared_offsets_checked(model_path):
    header, data = _header(model_path)
    header["dense.bias"]["data_offsets"][1] += 4
    _write_raw(model_path, header, data)
    with pytest.raises(ModelFileError, match=r"tensor dense.bias declares bytes"):
        digitlab.load(model_path)
    header["dense.bias"]["data_offsets"] = "all of them"
    _write_raw(model_path, header, data)
    with pytest.raises(ModelFileError, match=r"tensor dense.bias: data_offsets must be two integers"):
        digitlab.load(model_path)


@pytest.mark.parametrize(("meta", "message"), [
    ([1, 2], "metadata is a JSON array, expected an object"),
    ("text", "metadata is a JSON string, expected an object"),
    (None, "metadata is a JSON null, expected an object"),
    ({"a": json.loads("[" * 20 + "]" * 20)}, "nested more than 16 levels"),
])
def test_metadata_not_an_object(model_path, meta, message):
    header, data = _header(model_path)
    header["__metadata__"]["digitlab"] = json.dumps(meta)
    _write_raw(model_path, header, data)
    with pytest.raises(ModelFileError, match=re.escape(message)):
        digitlab.load(model_path)


def test_metadata_nested_past_the_json_parser(model_path):
    header, data = _header(model_path)
    header["__metadata__"]["digitlab"] = "[" * 200_000 + "]" * 200_000  # RecursionError in json, not a crash
    _write_raw(model_path, header, data)
    with pytest.raises(ModelFileError, match="nested too deeply"):
        digitlab.load(model_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"arch_config": {**ArchConfig().to_dict(), "pool_after": None}}, "arch_config.pool_after: expected a list"),
    ({"arch_config": {**ArchConfig().to_dict(), "stem_kernel": "3"}}, "arch_config.stem_kernel: expected an integer"),
    ({"arch_config": "tutorial"}, "metadata field arch_config: expected an object, got string"),
    ({"classes": ["0", "1", "2"]}, "metadata field classes: expected 10 names"),
    ({"classes": "0123456789"}, "metadata field classes: expected a list of strings"),
    ({"dataset": ["mnist"]}, "metadata field dataset: expected a string"),
    ({"dataset": "x" * 10_000}, "metadata field dataset: expected one of mnist, fashion-mnist, got 'xxx"),
    ({"format_version": "1"}, "metadata field format_version: expected an integer"),
    ({"format_version": True}, "metadata field format_version: expected an integer"),
    ({"format": None}, "metadata format is None"),
    ({"test_metrics": {"accuracy": "high"}}, "metadata field test_metrics: expected numbers"),
    ({"tensors_sha256": "abc"}, "metadata field tensors_sha256: expected 64"),
    ({"classes": ["x" * 30_000] * 10}, "metadata field classes"),
    ({"calibration": 0.8}, "metadata field calibration: expected an object, got number"),
    ({"calibration": {"method": "msp", "threshold": 0.8}}, "metadata field calibration: missing source, target_frr"),
    ({"calibration": {**CALIBRATION, "method": "knn"}}, "calibration.method: expected one of msp, energy"),
    ({"calibration": {**CALIBRATION, "threshold": "high"}}, "metadata field calibration.threshold: expected a finite"),
    ({"calibration": {**CALIBRATION, "threshold": None}}, "metadata field calibration.threshold: expected a finite"),
    ({"calibration": {**CALIBRATION, "target_frr": 1.5}}, "calibration.target_frr: expected a number in"),
    ({"calibration": {**CALIBRATION, "source": 5}}, "metadata field calibration.source: expected a string"),
])
def test_metadata_fields_validated(model_path, change, message):
    """One line naming the file and the field (these were tracebacks, or errors only at predict time)."""
    _rewrite(model_path, lambda a, m: (a, {**m, **change}), rehash=False)
    with pytest.raises(ModelFileError) as e:
        digitlab.load(model_path)
    text = str(e.value)
    assert "m.safetensors: " in text and message in text, text
    assert "\n" not in text and len(text) < 400


def test_calibration_stored_and_read(model_path):
    _rewrite(model_path, lambda a, m: (a, {**m, "calibration": CALIBRATION}), rehash=False)
    assert digitlab.load(model_path).metadata["calibration"] == CALIBRATION


# Within MAX_PARAMS (3.2M), yet 26 MB of activations an image: 4096 1x1 channels kept at 28x28.
WIDE = ArchConfig(convs=[4096], stem_kernel=1, pool_after=[], dense=1)


class _CountingSession:
    """Stands in for the onnxruntime session: records each batch's size, answers zeros."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes

    def run(self, names, feed):
        n = feed["image"].shape[0]
        self.sizes.append(n)
        return np.zeros((n, 10), np.float32), np.zeros((n, 10), np.float32)


def _batch_sizes(arch: ArchConfig, backend: str, n: int, monkeypatch) -> list[int]:
    """The batch sizes predict runs n images of a (zero-weight) net of arch in."""
    from digitlab.model import numpy_forward, param_shapes

    weights = {k: np.zeros(shape, np.float32) for k, (shape, _) in param_shapes(arch).items()}
    model = modelfile.DigitModel(arch, weights, {}, backend=backend)
    sizes: list[int] = []
    if backend == "numpy":
        monkeypatch.setattr(modelfile, "numpy_forward", lambda a, w, x: sizes.append(len(x)) or numpy_forward(a, w, x))
    else:
        model._session = _CountingSession(sizes)
    assert model.predict(np.zeros((n, 28, 28), np.uint8)).shape == (n, 10)
    return sizes


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_predict_batches_fit_the_forward_budget(monkeypatch, backend):
    """A model file fixes its activations' size, not only its weights': predict cuts its batches so that
    one batch's activations stay within FORWARD_BUDGET (this net at batch 1024 would need 26 GB)."""
    from digitlab.model import forward_bytes

    sizes = _batch_sizes(WIDE, backend, 9, monkeypatch)
    assert sum(sizes) == 9 and max(sizes) * forward_bytes(WIDE) <= modelfile.FORWARD_BUDGET, sizes
    assert _batch_sizes(ArchConfig(), backend, 300, monkeypatch) == [300]  # the tutorial's: one batch still


def test_no_import_cycle():
    """modelfile imports keras and onnx (inside functions); they import only model, data, _io and errors."""
    import ast

    package = Path(digitlab.__file__).parent
    for name in ("keras", "onnx", "model", "_io", "data"):
        tree = ast.parse((package / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = [ast.Pass()]  # type-checking imports do not run
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("digitlab"):
                imported.add(node.module)
        assert imported <= {"digitlab", "digitlab.model", "digitlab.data", "digitlab._io", "digitlab.errors"}, name
    assert not (package / "interop.py").exists()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_reloads_into_torch(tmp_path, arch):
    """to_torch() (integrated gradients' road) on every architecture: batch-norm nets once failed here,
    PyTorch adding the step counter our files do not keep to the weights it was given."""
    import torch

    cfg = ARCHITECTURES[arch]
    net = build_torch(cfg).eval()
    weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    path = modelfile.save(tmp_path / "m.safetensors", weights, {
        "architecture": arch, "arch_config": cfg.to_dict(), "dataset": "mnist",
        "classes": [str(i) for i in range(10)]})
    model = digitlab.load(path)
    x = np.random.default_rng(0).random((4, 28, 28), np.float32)
    with torch.no_grad():
        z = model.to_torch()(torch.from_numpy(x)[:, None]).numpy()
    assert np.allclose(z, numpy_forward(cfg, model.weights, x), atol=1e-4)


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "PNG"), ("JPEG", "JPEG"), ("GIF", "GIF"), ("BMP", "BMP"),
                                           ("TIFF", "TIFF"), ("WEBP", "WebP")])
def test_an_image_given_as_the_model_says_so(tmp_path, fmt, kind):
    """`digitlab read IMAGE MODEL` (arguments swapped) said "header declares 727,905,341,920,923,785 bytes"."""
    from PIL import Image

    path = tmp_path / "digit.img"
    Image.new("L", (28, 28), 255).save(path, fmt)
    with pytest.raises(ModelFileError, match=f"a {kind} image, not a model file"):
        modelfile.load(path)
