"""The robustness suite (issue 13): random mutations of valid files, and files that declare far more than
they hold. Every outcome is a clean DigitlabError or a correct load, never another exception; the
big-declaration cases run in a subprocess under an address-space limit to prove bounded memory.

Readers covered: model files (digitlab.modelfile), IDX files (raw and gzip), Keras .npz datasets, and
for the memory bounds Keras .h5/.keras files. Checkpoints are train.py's and not covered here.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import digitlab
from digitlab import data, modelfile
from digitlab.errors import DigitlabError
from digitlab.model import ARCHITECTURES, build_torch
from tests.test__io import deflate_bomb

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ROOT = Path(__file__).resolve().parent.parent


# --- model files ---------------------------------------------------------------------------------------

def _model_bytes() -> tuple[bytes, dict[str, np.ndarray]]:
    import tempfile

    import torch

    torch.manual_seed(0)
    cfg = ARCHITECTURES["small"]  # 60k parameters: 240 KB, quick to mutate and hash
    weights = {k: v.numpy() for k, v in build_torch(cfg).state_dict().items()}
    with tempfile.TemporaryDirectory() as d:
        path = modelfile.save(Path(d) / "m.safetensors", weights, {
            "architecture": "small", "arch_config": cfg.to_dict(), "dataset": "mnist",
            "classes": [str(i) for i in range(10)]})
        return path.read_bytes(), weights


MODEL, WEIGHTS = _model_bytes()
HEADER_END = 8 + int.from_bytes(MODEL[:8], "little")


def _load_outcome(path: Path) -> str:
    """'refused' (a DigitlabError of one bounded line) or 'equal' (the very weights that were saved)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = digitlab.load(path).weights
    except DigitlabError as e:
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)[:1000]
        return "refused"
    assert set(got) == set(WEIGHTS) and all(np.array_equal(got[k], WEIGHTS[k]) for k in WEIGHTS)
    return "equal"


flips = st.lists(st.integers(0, 8 * len(MODEL) - 1), min_size=1, max_size=4)
header_flips = st.lists(st.integers(0, 8 * HEADER_END - 1), min_size=1, max_size=3)


@FAST
@given(bits=st.one_of(flips, header_flips))
def test_model_file_bit_flips(tmp_path, bits):
    raw = bytearray(MODEL)
    for bit in bits:
        raw[bit // 8] ^= 1 << (bit % 8)
    (tmp_path / "m.safetensors").write_bytes(bytes(raw))
    _load_outcome(tmp_path / "m.safetensors")


@FAST
@given(cut=st.integers(0, len(MODEL) - 1), extra=st.binary(max_size=64))
def test_model_file_truncations_and_appends(tmp_path, cut, extra):
    (tmp_path / "m.safetensors").write_bytes(MODEL[:cut] + extra)
    assert _load_outcome(tmp_path / "m.safetensors") == "refused"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=20)


@FAST
@given(where=st.sampled_from(["tensor", "metadata", "arch", "header"]), key=st.text(max_size=12), value=json_values)
def test_model_file_header_edits(tmp_path, where, key, value):
    """A well-formed header whose fields say anything at all."""
    header = json.loads(MODEL[8:HEADER_END])
    meta = json.loads(header["__metadata__"]["digitlab"])
    if where == "tensor":
        header["conv2d.weight"][key or "dtype"] = value
    elif where == "metadata":
        meta[key or "classes"] = value
    elif where == "arch":
        meta["arch_config"][key or "convs"] = value
    else:
        header[key or "__metadata__"] = value
    if where in ("metadata", "arch"):
        header["__metadata__"]["digitlab"] = json.dumps(meta)
    text = json.dumps(header).encode()
    (tmp_path / "m.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + MODEL[HEADER_END:])
    _load_outcome(tmp_path / "m.safetensors")


# --- IDX files -----------------------------------------------------------------------------------------

STEM = "t10k-labels-idx1-ubyte"


@pytest.fixture(scope="module")
def labels_raw(mnist_dir) -> bytes:
    return gzip.decompress((mnist_dir / f"{STEM}.gz").read_bytes())


def _idx_outcome(path: Path, original: bytes) -> None:
    try:
        got = data.read_idx_file(path, STEM, data.DATASETS["mnist"])
    except DigitlabError as e:
        assert "\n" not in str(e) and len(str(e)) < 600
        return
    assert got.tobytes() == original[8:]


@FAST
@given(bits=st.lists(st.integers(0, 8 * 10_008 - 1), min_size=1, max_size=3), cut=st.integers(0, 10_008),
       gz=st.booleans())
def test_idx_mutations(tmp_path, labels_raw, bits, cut, gz):
    raw = bytearray(labels_raw)
    packed = bytearray(gzip.compress(labels_raw)) if gz else raw
    for bit in bits:
        packed[(bit // 8) % len(packed)] ^= 1 << (bit % 8)
    path = tmp_path / (f"{STEM}.gz" if gz else STEM)
    path.write_bytes(bytes(packed[:cut]))
    _idx_outcome(path, labels_raw)


@FAST
@given(content=st.binary(max_size=64), kind=st.sampled_from(["images", "labels"]), count=st.integers(0, 3))
def test_parse_idx_any_bytes(content, kind, count):
    try:
        a = data.parse_idx(content, "f", kind, count)
    except DigitlabError:
        return
    assert a.shape[0] == count and a.dtype == np.uint8


# --- Keras .npz datasets ---------------------------------------------------------------------------------

def _small_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2, np.uint8),
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.uint8))
    return buffer.getvalue()


NPZ = _small_npz()


@FAST
@given(bits=st.lists(st.integers(0, 8 * len(NPZ) - 1), min_size=1, max_size=4), cut=st.integers(1, len(NPZ)))
def test_npz_mutations(tmp_path, bits, cut):
    raw = bytearray(NPZ)
    for bit in bits:
        raw[bit // 8] ^= 1 << (bit % 8)
    (tmp_path / "mnist.npz").write_bytes(bytes(raw[:cut]))
    with pytest.raises(DigitlabError):  # the shapes are not MNIST's: every outcome is a refusal
        data.read_keras_npz(tmp_path / "mnist.npz", data.DATASETS["mnist"])


def _small_images() -> dict[str, bytes]:
    """A digit-like picture (a dark ring on light paper) in each format people send, a few hundred bytes each."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (40, 40), 230)
    ImageDraw.Draw(im).ellipse([10, 6, 30, 34], outline=20, width=3)
    out = {}
    for fmt, mode in [("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "L"),
                      ("WEBP", "RGB")]:
        buffer = io.BytesIO()
        im.convert(mode).save(buffer, fmt)
        out[f"{fmt}-{mode}"] = buffer.getvalue()
    return out


IMAGES = _small_images()


@settings(FAST, max_examples=300)
@given(kind=st.sampled_from(sorted(IMAGES)), bits=st.lists(st.integers(0, 8 * 4096 - 1), min_size=1, max_size=6),
       cut=st.integers(1, 4096), extra=st.binary(max_size=32))
def test_image_mutations(kind, bits, cut, extra):
    """Image readers: a picture with flipped bits, cut short or with bytes appended is either read (and
    prepared) or refused with an ImageError of one line, never another exception."""
    from digitlab.errors import ImageError
    from digitlab.images import decode
    from digitlab.prepare import prepare

    raw = bytearray(IMAGES[kind])
    for bit in bits:
        if bit // 8 < len(raw):
            raw[bit // 8] ^= 1 << (bit % 8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(decode(bytes(raw[:cut]) + extra, name="x.img"))
    except ImageError as e:
        assert "\n" not in str(e) and str(e).startswith("x.img"), str(e)


# --- files declaring far more than they hold, read under an address-space limit ----------------------------

LIMIT = 1536 << 20  # 1.5 GB of address space, interpreter and libraries included
RSS_TARGET_MB = 500  # issue 13: no file makes a CLI command exceed 500 MB

READER = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    import warnings
    warnings.simplefilter("ignore")
    from digitlab import data, load
    from digitlab.errors import DigitlabError
    def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    results = {{}}
    for case, kind, path in json.loads(sys.argv[1]):
        try:
            if kind == "model":
                load(path)
            else:
                data.load_mnist(path)
            results[case] = "loaded"
        except DigitlabError as e:
            results[case] = "DigitlabError: " + str(e)[:200]
        except BaseException as e:
            results[case] = "OTHER " + type(e).__name__ + ": " + str(e)[:200]
        results[case + " peak_mb"] = peak_mb()
    results["peak_mb"] = peak_mb()
    print(json.dumps(results))
""")


def _zip_with_raw_member(path: Path, stored: dict[str, bytes], name: str, deflated: bytes, size: int) -> None:
    """A zip whose last member `name` is raw deflate data declaring `size` bytes (< 4 GB, no zip64);
    zipfile cannot write such a member from pre-compressed data, so the records are written here."""
    out, central = io.BytesIO(), []
    for member, body, method, declared, crc in [*((n, b, 0, len(b), zlib.crc32(b)) for n, b in stored.items()),
                                                (name, deflated, 8, size, 0)]:
        offset, encoded = out.tell(), member.encode()
        fields = (20, 0, method, 0, 0, crc, len(body), declared, len(encoded), 0)
        local = zip(fields, (2, 2, 2, 2, 2, 4, 4, 4, 2, 2), strict=True)
        out.write(b"PK\x03\x04" + b"".join(v.to_bytes(w, "little") for v, w in local) + encoded + body)
        cfields = (20, 20, 0, method, 0, 0, crc, len(body), declared, len(encoded), 0, 0, 0, 0, 0, offset)
        widths = (2, 2, 2, 2, 2, 2, 4, 4, 4, 2, 2, 2, 2, 2, 4, 4)
        central.append(b"PK\x01\x02" + b"".join(v.to_bytes(w, "little") for v, w in zip(cfields, widths, strict=True))
                       + encoded)
    start = out.tell()
    directory = b"".join(central)
    out.write(directory + b"PK\x05\x06" + b"".join(v.to_bytes(w, "little") for v, w in zip(
        (0, 0, len(central), len(central), len(directory), start, 0), (2, 2, 2, 2, 4, 4, 2), strict=True)))
    path.write_bytes(out.getvalue())


def _big_declarations(tmp: Path, mnist_dir: Path) -> list[tuple[str, str, str]]:
    cases = []
    sparse = tmp / "sparse.safetensors"  # 3 GB on paper, 240 KB on disk
    sparse.write_bytes(MODEL)
    with open(sparse, "r+b") as f:
        f.truncate(3 << 30)
    cases.append(("sparse 3 GB model file", "model", str(sparse)))

    million = tmp / "million.safetensors"  # a real 67 MB header listing a million tensors
    entries = ",".join(f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'
                       for i in range(1_000_000))
    header = ("{" + entries + "}").encode()
    with open(million, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 4_000_000)
    cases.append(("million-tensor header", "model", str(million)))

    bombs = tmp / "bombs"  # MNIST with a 4 MB gzip inflating to 4 GB in place of the training images
    bombs.mkdir()
    for stem in data.FILES:
        (bombs / f"{stem}.gz").write_bytes((mnist_dir / f"{stem}.gz").read_bytes())
    (bombs / "train-images-idx3-ubyte.gz").write_bytes(deflate_bomb(4 << 30))
    cases.append(("gzip bomb", "data", str(bombs)))

    import h5py

    h5 = tmp / "huge.h5"  # a few KB declaring a 1.6 GB kernel
    with h5py.File(h5, "w") as f:
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [b"conv2d"]
        layer = g.create_group("conv2d")
        layer.attrs["weight_names"] = [b"conv2d/kernel:0"]
        layer.create_dataset("conv2d/kernel:0", shape=(20000, 20000), dtype="f4", chunks=(500, 500))
    cases.append((".h5 declaring a huge dataset", "model", str(h5)))

    config = (ROOT / "tests" / "fixtures" / "keras3_tutorial_config.json").read_bytes()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(b"\0" * (1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    keras_bomb = tmp / "bomb.keras"  # 4 MB, model.weights.h5 inflating to 4 GB - 1 MB
    _zip_with_raw_member(keras_bomb, {"config.json": config}, "model.weights.h5",
                         segment * 4095 + c.flush(), 4095 << 20)
    cases.append((".keras with a 4 GB member", "model", str(keras_bomb)))
    return cases


@pytest.mark.slow  # five readers in subprocesses under an address-space limit
def test_big_declarations_bounded_memory(tmp_path, mnist_dir):
    """Each of these used to allocate what it declared (3.2 GB, 2 GB, 4.2 GB, 1.6 GB, 4.2 GB): under a
    1.5 GB address-space limit each is now a clean DigitlabError, and the process peaks under 500 MB."""
    cases = _big_declarations(tmp_path, mnist_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", READER.format(limit=LIMIT), json.dumps(cases)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, _, _ in cases:
        assert results[case].startswith("DigitlabError: "), (case, results[case])
    assert results["peak_mb"] < RSS_TARGET_MB, {k: v for k, v in results.items() if "peak" in k}


def test_zip_writer_makes_a_readable_zip(tmp_path):
    """The hand-written zip above is a real zip: zipfile lists it and reads a small deflated member."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = c.compress(b"hello") + c.flush()
    _zip_with_raw_member(tmp_path / "z.zip", {"a.txt": b"abc"}, "b.txt", body, 5)
    with zipfile.ZipFile(tmp_path / "z.zip") as z:
        assert z.namelist() == ["a.txt", "b.txt"] and z.read("a.txt") == b"abc"
        assert z.getinfo("b.txt").file_size == 5
