"""Model files: one safetensors file, weights plus a JSON metadata document. Never pickle.

Metadata (the safetensors header's ``digitlab`` entry) holds: format and format_version, architecture
name and config, dataset and class names, preprocessing, training settings, history, test metrics and
the digitlab version. Loading checks all of it and refuses a truncated, corrupt, foreign or too-new
file with a message that names the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import __version__
from digitlab.errors import ModelFileError
from digitlab.model import ArchConfig, count_params, numpy_forward, param_shapes, softmax

FORMAT = "digitlab-model"
FORMAT_VERSION = 1
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
        self._session: Any = None

    @property
    def classes(self) -> list[str]:
        return list(self.metadata.get("classes", [str(i) for i in range(10)]))

    @property
    def param_count(self) -> int:
        return count_params(self.arch)

    def predict(self, images: Any, batch_size: int = 1024) -> np.ndarray:
        """Probabilities, float32 (N, classes), for images: whatever digitlab.prepare.model_inputs accepts
        (arrays or tensors (N, 28, 28) uint8 0..255 / float 0..1, PIL images, file paths, lists of them),
        each prepared by prepare(); MNIST-like inputs pass unchanged. Raises ImageError for bad input."""
        from digitlab.prepare import model_inputs

        x = model_inputs(images).astype(np.float32) / 255.0
        out = np.empty((len(x), self.arch.classes), dtype=np.float32)
        session = self._onnx_session()
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size]
            if session is not None:
                out[i:i + batch_size] = session.run(None, {"image": chunk[:, None]})[0]
            else:
                out[i:i + batch_size] = softmax(numpy_forward(self.arch, self.weights, chunk))
        return out

    def _onnx_session(self):
        if self.backend == "numpy" or self._session is False:
            return None
        if self._session is None:
            try:
                import onnxruntime as ort

                from digitlab.interop import onnx_model
            except ImportError:
                if self.backend == "onnxruntime":
                    raise ModelFileError("backend onnxruntime: pip install 'digitlab[onnx]'") from None
                self._session = False
                return None
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(onnx_model(self.arch, self.weights).SerializeToString(),
                                                 options, providers=["CPUExecutionProvider"])
        return self._session

    def to_torch(self):  # -> torch.nn.Sequential
        """The same weights as a PyTorch module (eval mode)."""
        import torch

        from digitlab.model import build_torch

        net = build_torch(self.arch)
        net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.weights.items()})
        return net.eval()


def save(path: str | Path, weights: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write a model file atomically (temporary file beside it, then rename)."""
    from safetensors.numpy import save as st_save

    path = Path(path)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "digitlab_version": __version__,
            "preprocessing": PREPROCESSING, **metadata}
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    payload = st_save(arrays, metadata={"digitlab": json.dumps(meta)})
    from digitlab._io import atomic_write_bytes

    atomic_write_bytes(path, payload)
    return path


def load(path: str | Path) -> DigitModel:
    """Load a digitlab model file, or a Keras .h5/.keras file of the tutorial's architecture."""
    path = Path(path)
    if path.is_dir():
        what = " (a TensorFlow SavedModel: save it from Keras as .keras or .h5 instead)" \
            if (path / "saved_model.pb").is_file() else ""
        raise ModelFileError(f"{path}: is a directory, not a model file{what}")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        from digitlab.interop import load_keras

        return load_keras(path)
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    data = path.read_bytes()
    try:
        arrays = st_load(data)
        header = safetensors_metadata(data)
    except (SafetensorError, ValueError) as e:
        hint = _foreign_hint(path, data)
        if hint:
            raise ModelFileError(f"{path}: not a digitlab model file (expected safetensors){hint}") from None
        raise ModelFileError(f"{path}: not a valid model file: truncated or corrupt ({e})") from None
    raw = header.get("digitlab")
    if raw is None:
        raise ModelFileError(f"{path}: a safetensors file, but not a digitlab model (no 'digitlab' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ModelFileError(f"{path}: the digitlab metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version} is newer than this digitlab supports ({FORMAT_VERSION}); "
            f"it was written by digitlab {meta.get('digitlab_version', '?')} - upgrade digitlab"
        )
    try:
        arch = ArchConfig.from_dict(meta["arch_config"])
    except (KeyError, TypeError, ModelFileError) as e:
        raise ModelFileError(f"{path}: bad or missing architecture config ({e})") from None
    check_weights(path, arch, arrays)
    return DigitModel(arch, arrays, meta)


def _foreign_hint(path: Path, data: bytes) -> str:
    """What a file that is not safetensors probably is, and what to do about it."""
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".pkl", ".bin") or data[:1] == b"\x80" \
            or (data[:4] == b"PK\x03\x04" and b"data.pkl" in data[:4096]):
        return ("; it looks like a PyTorch/pickle file, which digitlab never loads (unpickling can run code); "
                "save the weights with safetensors, or train or import a model with digitlab")
    if path.suffix.lower() == ".onnx":
        return "; ONNX is an export format here (`digitlab export`); digitlab loads its own files and Keras's"
    if data[:4] in (b"\x89HDF", b"PK\x03\x04"):
        return "; a Keras file? name it .h5 or .keras"
    return ""


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string-to-string metadata in a safetensors file's JSON header (the format: 8 bytes of
    little-endian header length, then the header). Call after the file has parsed as safetensors."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return header.get("__metadata__") or {}


def check_weights(path: Path | str, arch: ArchConfig, arrays: dict[str, np.ndarray]) -> None:
    expected = param_shapes(arch)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ModelFileError(f"{path}: weights do not match the architecture (missing {missing}, unexpected {extra})")
    for key, (shape, _) in expected.items():
        if tuple(arrays[key].shape) != shape:
            raise ModelFileError(f"{path}: {key} has shape {tuple(arrays[key].shape)}, expected {shape}")
        if not np.isfinite(arrays[key]).all():
            raise ModelFileError(f"{path}: {key} holds NaN or infinite values")
