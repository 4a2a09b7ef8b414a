"""Model files: one safetensors file, weights plus a JSON metadata document. Never pickle.

Metadata (the safetensors header's ``digitlab`` entry) holds: format and format_version, architecture
name and config, dataset and class names, preprocessing, training settings, history, test metrics, the
digitlab version and ``tensors_sha256``, the SHA-256 of the weights. Loading checks all of it and
refuses a truncated, corrupt, foreign, too-new or altered file with one line that names the file and
the field, before reading more than the header: the architecture fixes every tensor's dtype (float32)
and shape, so the file's size is known before its data is read.

``load`` is the one place that tells file types apart: digitlab safetensors, Keras (.h5, .keras, via
digitlab.keras), and the formats it refuses with a hint (pickle, ONNX, a TensorFlow SavedModel folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import __version__
from digitlab.config import DATASET_NAMES
from digitlab.errors import ModelFileError
from digitlab.model import ArchConfig, _brief, count_params, forward_bytes, numpy_forward, param_shapes, softmax
from digitlab.trust import check_calibration

FORMAT = "digitlab-model"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # a model's header is ~3 KB; safetensors itself allows 100 MB
MAX_META_DEPTH = 16  # nesting of the metadata JSON (the deepest real field, training settings, is 2)
# Activations of one forward batch (model.forward_bytes per image): batches are cut to fit, so a file cannot
# make predict allocate gigabytes (a 13 MB model whose activations are 13 MB an image). 64 MiB is ~340
# images of the tutorial's net, one of the largest a file may declare.
FORWARD_BUDGET = 64 << 20
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".bin")
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
PREPROCESSING = {"scale": "pixels / 255", "layout": "N x 1 x 28 x 28, ink bright (MNIST)",
                 "images": "grayscale, ink bright, cropped, fit to 20x20, centred by mass in 28x28"}


class DigitModel:
    """A trained recognizer: weights (NumPy) plus metadata. ``predict`` needs no torch."""

    def __init__(self, arch: ArchConfig, weights: dict[str, np.ndarray], metadata: dict[str, Any],
                 backend: str = "auto"):
        self.arch = arch
        self.weights = weights
        self.metadata = metadata
        # "auto": onnxruntime when it is installed (digitlab[onnx]; several times faster on batches),
        # else NumPy. Both compute the same network from the same weights (equal within 1e-6).
        self.backend = backend
        # onnxruntime's threads per inference; 0: its own choice (one per core, spinning between runs).
        # The server sets 1: its requests are single pictures, and a spinning pool burned a third of a
        # canvas request's CPU beside the work (benchmarks/app_overhead.py).
        self.onnx_threads = 0
        self._session: Any = None
        self._forward_bytes: int | None = None
        self.path: Path | None = None  # the file it was loaded from (load sets it): its companions lie beside it

    @property
    def classes(self) -> list[str]:
        """The class names, output index order ("0".."9" for MNIST, or the dataset's own)."""
        return list(self.metadata.get("classes", [str(i) for i in range(10)]))

    @property
    def param_count(self) -> int:
        """Trainable and non-trainable values in the architecture's tensors (93,322 for the tutorial's)."""
        return count_params(self.arch)

    def predict(self, images: Any, batch_size: int = 1024, *, logits: bool = False) -> Any:
        """Probabilities, float32 (N, classes), for images: whatever digitlab.prepare.model_inputs accepts
        (arrays or tensors (N, 28, 28) uint8 0..255 / float 0..1, PIL images, file paths, lists of them),
        each prepared by prepare(); MNIST-like inputs pass unchanged. Raises ImageError for bad input.
        With logits=True: (probabilities, logits), both float32 (N, classes), from the same forward pass
        (the logits are the softmax's input; the energy score needs them, digitlab.trust). batch_size is
        an upper bound: batches are cut further to keep their activations within FORWARD_BUDGET."""
        from digitlab.prepare import model_inputs

        probs, raw = self.forward(model_inputs(images), batch_size)
        return (probs, raw) if logits else probs

    def forward(self, images: np.ndarray, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, logits), float32 (N, classes), for images that prepare() already made: uint8
        (N, 28, 28) 0..255, MNIST-style. predict() checks and prepares its inputs first; a caller holding
        Prepared records (digitlab.predict) comes here directly, so each picture is checked once."""
        x = images.astype(np.float32) * np.float32(1 / 255)
        if self._forward_bytes is None:  # (the architecture fixes it; working it out cost a tenth of a request)
            self._forward_bytes = forward_bytes(self.arch)
        batch_size = max(1, min(batch_size, FORWARD_BUDGET // self._forward_bytes))
        probs = np.empty((len(x), self.arch.classes), dtype=np.float32)
        raw = np.empty_like(probs)
        session = self._onnx_session()
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            if session is not None:
                probs[i:i + batch_size], raw[i:i + batch_size] = session.run(None, {"image": chunk[:, None]})
            else:
                raw[i:i + batch_size] = numpy_forward(self.arch, self.weights, chunk)
                probs[i:i + batch_size] = softmax(raw[i:i + batch_size])
        return probs, raw

    def logits(self, images: Any, batch_size: int = 1024) -> np.ndarray:
        """Logits, float32 (N, classes): the softmax's input, for images as predict takes them."""
        return self.predict(images, batch_size, logits=True)[1]

    def _onnx_session(self):
        if self.backend == "numpy" or self._session is False:
            return None
        if self._session is None:
            try:
                import onnxruntime as ort

                from digitlab.onnx import onnx_model
            except ImportError:
                if self.backend == "onnxruntime":
                    raise ModelFileError("backend onnxruntime: pip install 'digitlab[onnx]'") from None
                self._session = False
                return None
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = self.onnx_threads
            self._session = ort.InferenceSession(onnx_model(self.arch, self.weights, logits=True).SerializeToString(),
                                                 options, providers=["CPUExecutionProvider"])
        return self._session

    def to_torch(self):  # -> torch.nn.Sequential
        """The same weights as a PyTorch module (eval mode)."""
        import torch

        from digitlab.model import build_torch, load_weights

        net = build_torch(self.arch)
        load_weights(net, {k: torch.from_numpy(v.copy()) for k, v in self.weights.items()})
        return net.eval()


def tensors_sha256(weights: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) of the weights as float32 little-endian bytes, tensor after tensor in name order:
    what safetensors stores, independent of the header, so any flipped bit in the data changes it."""
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(np.ascontiguousarray(weights[key], dtype="<f4").tobytes())
    return digest.hexdigest()


def save(path: str | Path, weights: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write a model file atomically (temporary file beside it, then rename); weights are stored as
    float32 with their SHA-256 in the metadata (tensors_sha256). Raises OSError if it cannot be written."""
    from safetensors.numpy import save as st_save

    from digitlab._io import atomic_write_bytes

    path = Path(path)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "digitlab_version": __version__,
            "preprocessing": PREPROCESSING, **metadata, "tensors_sha256": tensors_sha256(arrays)}
    atomic_write_bytes(path, st_save(arrays, metadata={"digitlab": json.dumps(meta)}))
    return path


def import_keras(path: str | Path, out: str | Path) -> Path:
    """Convert a Keras file of the tutorial's network into a digitlab model file; returns out.
    Raises ModelFileError (see digitlab.keras.read_keras) or OSError (out cannot be written)."""
    from digitlab.keras import read_keras

    _, weights, meta = read_keras(path)
    meta["source"]["imported_by"] = f"digitlab {__version__}"
    return save(out, weights, meta)


# The first bytes of the image files a user may give where a model is asked for (arguments swapped).
IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))


def load(path: str | Path) -> DigitModel:
    """Load a digitlab model file, or a Keras .h5/.keras file of the tutorial's network.

    The one place file types are told apart (by name and by their first bytes). Raises ModelFileError,
    one line naming the file and the problem, for a missing, truncated, corrupt, altered, foreign or
    too-new file; never reads more than the header before its checks."""
    path = Path(path)
    if path.is_dir():
        what = " (a TensorFlow SavedModel: save it from Keras as .keras or .h5 instead)" \
            if (path / "saved_model.pb").is_file() else ""
        raise ModelFileError(f"{path}: is a directory, not a model file{what}")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read ({e.strerror})") from None
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES or head == b"\x89HDF\r\n\x1a\n" or _is_keras_zip(path, head):
        from digitlab.keras import read_keras

        arch, weights, meta = read_keras(path)
        check_weights(path, arch, weights)
        return _from(path, DigitModel(arch, weights, meta))
    if suffix in PICKLE_SUFFIXES or _is_torch_zip(path, head):
        raise ModelFileError(f"{path}: not a digitlab model file (expected safetensors); it looks like a "
                             "PyTorch/pickle file, which digitlab never loads (unpickling can run code); save the "
                             "weights with safetensors, or train or import a model with digitlab")
    image = next((kind for magic, kind in IMAGE_MAGIC if head.startswith(magic)), None)
    if image is not None:
        raise ModelFileError(f"{path}: a {image} image, not a model file (give the model first, then the "
                             "images: `digitlab predict MODEL IMAGE...`, `digitlab read MODEL IMAGE...`)")
    if suffix == ".onnx":
        raise ModelFileError(f"{path}: not a digitlab model file (expected safetensors); ONNX is an export "
                             "format here (`digitlab export`); digitlab loads its own files and Keras's")
    arch, weights, meta = _read_model_file(path)
    return _from(path, DigitModel(arch, weights, meta))


def _from(path: Path, model: DigitModel) -> DigitModel:
    model.path = path
    return model


def _zip_names(path: Path, head: bytes) -> list[str]:
    import zipfile

    if not head.startswith(b"PK\x03\x04"):
        return []
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()[:1000]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []


def _is_keras_zip(path: Path, head: bytes) -> bool:
    return "config.json" in _zip_names(path, head)


def _is_torch_zip(path: Path, head: bytes) -> bool:
    return _is_pickle(path, head) or any(n.endswith("data.pkl") for n in _zip_names(path, head))


def _is_pickle(path: Path, head: bytes) -> bool:
    """A pickle stream starts with PROTO (0x80) and its protocol (2-5). So does a safetensors file whose
    header length (the first 8 bytes, little-endian) is 0x..280 to 0x..580 bytes: that one is told apart by
    its header, which fits in the file and opens with "{" (a length ending in 0x80 alone was enough to
    refuse digitlab's own files: 1 in 32 header lengths, and every model a given recipe writes alike)."""
    if len(head) < 2 or head[0] != 0x80 or head[1] not in (2, 3, 4, 5):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(8)
            brace = f.read(1) == b"{"
        fits = int.from_bytes(head, "little") <= path.stat().st_size - 8
    except OSError:
        return True
    return not (brace and fits)


def _fail(path: Path, message: str) -> ModelFileError:
    """A ModelFileError of one bounded line: the file, then what is wrong (at most 300 characters)."""
    message = " ".join(message.split())
    return ModelFileError(f"{path}: {message if len(message) <= 300 else message[:297] + '...'}")


def read_header(f: Any, path: Path, size: int) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header (8 bytes of little-endian length, then the header), read from
    the open binary file f of size bytes: (header, offset where the data starts). The header is read
    only when it declares at most MAX_HEADER_BYTES and fits in the file; raises ModelFileError otherwise."""
    if size < 8:
        raise _fail(path, f"not a valid model file: truncated or corrupt ({size} bytes, too short for safetensors)")
    n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"not a valid model file: the header declares {n:,} bytes, over the "
                          f"{MAX_HEADER_BYTES:,}-byte limit (corrupt, or not safetensors){_foreign_hint(path)}")
    if 8 + n > size:
        raise _fail(path, f"not a valid model file: truncated or corrupt (header of {n:,} bytes, file of {size:,})")
    try:
        header = json.loads(f.read(n))
    except (ValueError, RecursionError):
        raise _fail(path, f"not a valid model file: truncated or corrupt (header is not JSON){_foreign_hint(path)}") \
            from None
    if not isinstance(header, dict):
        raise _fail(path, f"not a valid model file: the header is a JSON {type(header).__name__}, not an object")
    return header, 8 + n


def _foreign_hint(path: Path) -> str:
    """What a file that is not safetensors probably is."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    if _is_torch_zip(path, head):
        return "; it looks like a PyTorch/pickle file, which digitlab never loads (unpickling can run code)"
    if head[:4] in (b"\x89HDF", b"PK\x03\x04"):
        return "; a Keras file? name it .h5 or .keras"
    return ""


def _read_model_file(path: Path) -> tuple[ArchConfig, dict[str, np.ndarray], dict[str, Any]]:
    """Header, metadata, declared tensors and file size checked in that order; only then the data
    (whose size the architecture fixes) is read and its SHA-256 compared with the metadata's."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, start = read_header(f, path, size)
        meta = parse_metadata(path, header.pop("__metadata__", None))
        arch = validate_metadata(path, meta)
        layout = _check_layout(path, arch, header)
        total = sum(end - begin for _, (begin, end) in layout.items())
        if size != start + total:
            what = "truncated" if size < start + total else "has trailing bytes"
            raise _fail(path, f"not a valid model file: truncated or corrupt (it {what}: {size:,} bytes, expected "
                              f"{start + total:,} for this architecture)")
        buf = bytearray(total)
        if f.readinto(buf) != total:
            raise _fail(path, "not a valid model file: truncated or corrupt (file shrank while reading)")
    shapes = param_shapes(arch)
    weights = {key: np.frombuffer(buf, "<f4", (end - begin) // 4, begin).reshape(shapes[key][0])
               for key, (begin, end) in layout.items()}
    expected = meta.get("tensors_sha256")
    if expected is None:
        warnings.warn(f"{path}: no tensors_sha256 in the metadata (written before digitlab checked its weights); "
                      "corruption of the weights cannot be detected - save it again to add one", stacklevel=3)
    elif tensors_sha256(weights) != expected:
        raise _fail(path, "the weights' SHA-256 differs from the one stored in the metadata (tensors_sha256): "
                          "the file is corrupt or was altered")
    check_weights(path, arch, weights)
    return arch, weights, meta


def _check_layout(path: Path, arch: ArchConfig, header: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Each declared tensor's dtype (F32 only), shape (the architecture's) and byte range (contiguous,
    no gaps or overlaps): name -> (begin, end) relative to the data start."""
    expected = param_shapes(arch)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        raise _fail(path, f"weights do not match the architecture (missing {_brief(missing, 120)}, "
                          f"unexpected {_brief(extra, 120)}; {len(header):,} tensors declared)")
    layout = {}
    for key, (shape, _) in expected.items():
        info = header[key]
        if not isinstance(info, dict):
            raise _fail(path, f"tensor {key}: expected an object with dtype, shape and data_offsets")
        if info.get("dtype") != "F32":
            raise _fail(path, f"tensor {key} is stored as {_brief(info.get('dtype'), 20)}; model files hold "
                              "float32 (F32) weights only")
        declared = info.get("shape")
        if not isinstance(declared, list) or tuple(declared) != shape:
            raise _fail(path, f"{key} has shape {_brief(tuple(declared) if isinstance(declared, list) else declared)}"
                              f", expected {shape}")
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise _fail(path, f"tensor {key}: data_offsets must be two integers, got {_brief(offsets)}")
        layout[key] = (offsets[0], offsets[1])
    position = 0
    for key, (begin, end) in sorted(layout.items(), key=lambda kv: kv[1]):
        if begin != position or end - begin != 4 * int(np.prod(expected[key][0])):
            raise _fail(path, f"not a valid model file: truncated or corrupt (tensor {key} declares bytes "
                              f"{begin}..{end}, expected {position}..{position + 4 * int(np.prod(expected[key][0]))})")
        position = end
    return layout


def parse_metadata(path: Path, raw: Any) -> dict[str, Any]:
    """The digitlab metadata document from the header's __metadata__ (string to string) map."""
    if raw is None or (isinstance(raw, dict) and "digitlab" not in raw):
        raise _fail(path, "a safetensors file, but not a digitlab model (no 'digitlab' metadata)")
    if not isinstance(raw, dict) or not isinstance(raw["digitlab"], str):
        raise _fail(path, "the header's __metadata__ must map names to strings")
    try:
        meta = json.loads(raw["digitlab"])
    except ValueError:
        raise _fail(path, "the digitlab metadata is not valid JSON") from None
    except RecursionError:
        raise _fail(path, "the digitlab metadata is nested too deeply") from None
    if not isinstance(meta, dict):
        raise _fail(path, f"the digitlab metadata is a JSON {_json_type(meta)}, expected an object")
    _check_depth(path, meta)
    return meta


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _check_depth(path: Path, meta: dict[str, Any]) -> None:
    """Refuse metadata nested deeper than MAX_META_DEPTH (iteratively: no recursion to exhaust)."""
    stack: list[tuple[Any, int, str]] = [(meta, 1, "metadata")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_META_DEPTH:
            raise _fail(path, f"{where}: nested more than {MAX_META_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in items:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1, f"{where}.{_brief(key, 30)}" if depth < 4 else where))


# The metadata fields digitlab reads: name -> (JSON type, description for messages). Others are kept as
# they are (later versions may add fields), within MAX_META_DEPTH.
METADATA_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format": (str, "a string"), "format_version": (int, "an integer"), "digitlab_version": (str, "a string"),
    "architecture": (str, "a string"), "arch_config": (dict, "an object"), "dataset": (str, "a string"),
    "classes": (list, "a list of strings"), "preprocessing": (dict, "an object"), "training": (dict, "an object"),
    "history": (dict, "an object"), "test_metrics": (dict, "an object"), "source": (dict, "an object"),
    "tensors_sha256": (str, "a string of 64 hex digits"), "calibration": (dict, "an object"),
}


def validate_metadata(path: Path, meta: dict[str, Any]) -> ArchConfig:
    """Check the metadata against METADATA_FIELDS and the architecture; returns the architecture.
    Raises ModelFileError naming the file and the field."""
    if meta.get("format") != FORMAT:
        raise _fail(path, f"metadata format is {_brief(meta.get('format'))}, expected {FORMAT!r}")
    for key, (kind, what) in METADATA_FIELDS.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, kind) or isinstance(value, bool)):
            raise _fail(path, f"metadata field {key}: expected {what}, got {_json_type(value)} {_brief(value, 40)}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, f"metadata field format_version: expected an integer >= 1, got {_brief(version)}")
    if version > FORMAT_VERSION:
        raise _fail(path, f"format version {version} is newer than this digitlab supports ({FORMAT_VERSION}); it was "
                          f"written by digitlab {str(meta.get('digitlab_version', '?'))[:20]} - upgrade digitlab")
    if "arch_config" not in meta:
        raise _fail(path, "metadata field arch_config is missing (the architecture)")
    try:
        arch = ArchConfig.from_dict(meta["arch_config"])
    except ModelFileError as e:
        raise _fail(path, f"bad architecture config: {e}") from None
    if "dataset" in meta and meta["dataset"] not in DATASET_NAMES:  # else it fails later, at --index or evaluate
        raise _fail(path, f"metadata field dataset: expected one of {', '.join(DATASET_NAMES)}, "
                          f"got {_brief(meta['dataset'], 40)}")
    classes = meta.get("classes")
    if classes is not None and (len(classes) != arch.classes
                                or not all(isinstance(c, str) and 0 < len(c) <= 100 for c in classes)):
        raise _fail(path, f"metadata field classes: expected {arch.classes} names (the output layer's size) of "
                          f"1-100 characters, got {_brief(classes)}")
    digest = meta.get("tensors_sha256")
    if digest is not None and not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise _fail(path, f"metadata field tensors_sha256: expected 64 lowercase hex digits, got {_brief(digest)}")
    if "calibration" in meta:  # the abstention threshold (digitlab.trust): a bad one fails here, not at predict
        try:
            check_calibration(meta["calibration"], "metadata field calibration")
        except ModelFileError as e:
            raise _fail(path, str(e)) from None
    for key in ("test_metrics",):
        values = meta.get(key, {})
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()):
            raise _fail(path, f"metadata field {key}: expected numbers, got {_brief(values)}")
    return arch


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string-to-string metadata in a safetensors file's JSON header (the format: 8 bytes of
    little-endian header length, then the header). Call after the file has parsed as safetensors."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return header.get("__metadata__") or {}


def check_weights(path: Path | str, arch: ArchConfig, arrays: dict[str, np.ndarray]) -> None:
    """arrays must hold exactly the architecture's tensors, each float32 of its shape and finite.
    Raises ModelFileError naming the file and the first tensor that differs."""
    expected = param_shapes(arch)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise _fail(Path(path), f"weights do not match the architecture (missing {_brief(missing, 120)}, "
                                f"unexpected {_brief(extra, 120)})")
    for key, (shape, _) in expected.items():
        if tuple(arrays[key].shape) != shape:
            raise _fail(Path(path), f"{key} has shape {tuple(arrays[key].shape)}, expected {shape}")
        if arrays[key].dtype != np.float32:
            raise _fail(Path(path), f"tensor {key} is {arrays[key].dtype}; model files hold float32 weights only")
        if not np.isfinite(arrays[key]).all():
            raise _fail(Path(path), f"{key} holds NaN or infinite values")
