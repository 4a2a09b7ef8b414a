"""MNIST-format datasets: IDX files, checksums, where they live, and downloading them.

Where the files come from, in order: an explicit ``data_dir`` (the CLI's ``--data-dir``),
``$DIGITLAB_DATA_DIR``, the user cache ``~/.cache/digitlab/<dataset>``, for Fashion-MNIST Debian's
``/usr/share/datasets/fashion-mnist``, and Keras's own copy (``~/.keras/datasets``: ``mnist.npz``, or
the ``fashion-mnist`` IDX folder), checked against the same checksums. Files missing from all of them
are downloaded from the public mirrors into the cache, checked against the SHA-256 of their
decompressed content, and only then moved into place, so an interrupted download never leaves a half
file behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab._io import LimitExceeded, atomic_write_bytes, gunzip_capped, read_bounded
from digitlab.errors import DataError

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetInfo:
    """What digitlab knows of a dataset: its class names, the SHA-256 of each IDX file's decompressed
    content, the download mirrors (tried in order) and the system folders a package installs it in."""
    name: str
    classes: tuple[str, ...]
    sha256: dict[str, str]  # of each file's decompressed content: the same for .gz and raw copies
    mirrors: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        classes=tuple(str(d) for d in range(10)),
        sha256={
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

EXPECTED_COUNT = {"train": 60000, "t10k": 10000}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def expected_size(stem: str) -> int:
    """Decompressed bytes of one of the four files: 16-byte header + N x 28 x 28 pixels, or 8 + N labels
    (47,040,016 / 60,008 / 7,840,016 / 10,008). No reader inflates or reads more than this."""
    count = EXPECTED_COUNT[stem.split("-")[0]]
    return 16 + count * 28 * 28 if "images" in stem else 8 + count


@dataclass
class DigitData:
    """A whole dataset in memory: uint8 images (N, 28, 28), ink bright; uint8 labels (N,)."""

    name: str
    classes: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: Path


def dataset_info(dataset: str) -> DatasetInfo:
    """The DatasetInfo of "mnist" or "fashion-mnist". Raises DataError naming the known ones otherwise."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise DataError(f"unknown dataset {dataset!r}; expected one of: {', '.join(DATASETS)}") from None


def cache_dir(dataset: str) -> Path:
    """The user cache folder downloads go to: $XDG_CACHE_HOME (or ~/.cache)/digitlab/DATASET."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "digitlab" / dataset


def _find_file(directory: Path, stem: str) -> Path | None:
    # The official names, then the dotted spelling some mirrors and Kaggle use (train-images.idx3-ubyte).
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                return candidate
    return None


def _has_files(directory: Path) -> bool:
    return all(_find_file(directory, stem) for stem in FILES)


def read_idx_bytes(path: Path, max_bytes: int) -> bytes:
    """The decompressed content of an IDX file, gzip or raw (told apart by gzip's magic bytes), read or
    inflated chunk by chunk and refused as soon as it passes max_bytes (a gzip bomb costs max_bytes).

    Raises DataError naming the file: unreadable, corrupt or truncated gzip, or larger than max_bytes."""
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                f.seek(0)
                return gunzip_capped(f, max_bytes)
            return read_bounded(path, max_bytes)
    except LimitExceeded as e:
        raise DataError(f"{path}: {e}; expected {max_bytes:,} bytes for this file (corrupt, or not MNIST)") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def parse_idx(content: bytes, path: Path | str, kind: str, count: int) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic, dimensions and length.

    kind is "images" (magic 2051, N x 28 x 28) or "labels" (magic 2049, N); count is the expected N.
    """
    magic_expected, ndim = (IMAGE_MAGIC, 3) if kind == "images" else (LABEL_MAGIC, 1)
    if len(content) < 4 + 4 * ndim:
        raise DataError(f"{path}: file too short ({len(content)} bytes) to be an IDX {kind} file")
    magic = int.from_bytes(content[:4], "big")
    if magic != magic_expected:
        raise DataError(
            f"{path}: wrong magic number {magic} (0x{magic:08x}); expected {magic_expected} for IDX {kind}"
        )
    dims = [int.from_bytes(content[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected_dims = [count, 28, 28][:ndim]
    if dims != expected_dims:
        raise DataError(f"{path}: wrong dimensions {dims}; expected {expected_dims}")
    header = 4 + 4 * ndim
    expected_len = header + int(np.prod(dims))
    if len(content) != expected_len:
        what = "truncated" if len(content) < expected_len else "has trailing bytes"
        raise DataError(f"{path}: {what}: {len(content)} bytes, expected {expected_len} for dimensions {dims}")
    # A copy: arrays over the bytes object would be read-only, which torch.from_numpy warns about.
    array = np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims).copy()
    if kind == "labels" and array.max(initial=0) > 9:
        raise DataError(f"{path}: label {int(array.max())} out of range; expected 0..9")
    return array


def read_idx_file(path: Path, stem: str, info: DatasetInfo) -> np.ndarray:
    """Read, checksum and parse one of the four files."""
    return _verified(read_idx_bytes(path, expected_size(stem)), str(path), stem, info)


def _verified(content: bytes, where: str, stem: str, info: DatasetInfo) -> np.ndarray:
    digest = hashlib.sha256(content).hexdigest()
    if digest != info.sha256[stem]:
        raise DataError(
            f"{where}: SHA-256 of the decompressed content is {digest}, expected {info.sha256[stem]} "
            f"for {info.name} {stem} (corrupt file, or a different dataset?)"
        )
    kind = "images" if "images" in stem else "labels"
    return parse_idx(content, where, kind, EXPECTED_COUNT[stem.split("-")[0]])


# Keras's copy: keras.datasets.mnist.load_data() (the tutorial's first line) caches ~/.keras/datasets/mnist.npz.
KERAS_NPZ_KEYS = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
                  "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def read_keras_npz(path: Path, info: DatasetInfo) -> dict[str, np.ndarray]:
    """The four arrays of Keras's .npz, checked against the same SHA-256 as the IDX files: each array
    is written back into its IDX file's exact bytes (header + pixels) before hashing. Never unpickled;
    each array's declared dtype and shape are checked before anything is allocated for it.

    Raises DataError naming the file (and the array)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for key, stem in KERAS_NPZ_KEYS.items():
                a = _npz_array(path, z, key, stem)
                magic = IMAGE_MAGIC if a.ndim == 3 else LABEL_MAGIC
                header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in a.shape)
                out[stem] = _verified(header + a.tobytes(), f"{path} ({key})", stem, info)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: not a readable Keras dataset .npz (expected arrays "
                        f"{', '.join(KERAS_NPZ_KEYS)}): {str(e)[:200]}") from None
    return out


def _npz_array(path: Path, z: zipfile.ZipFile, key: str, stem: str) -> np.ndarray:
    """One .npy member: its header (dtype, shape) checked against the IDX file's, then exactly that
    many bytes read. A member declaring a huge shape is refused before allocating."""
    count = EXPECTED_COUNT[stem.split("-")[0]]
    shape = (count, 28, 28) if "images" in stem else (count,)
    with z.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        declared, fortran, dtype = reader(f)
        if dtype.hasobject:
            raise ValueError(f"{key} holds Python objects, which would need allow_pickle (never done)")
        if dtype != np.uint8 or tuple(declared) != shape:
            raise DataError(f"{path}: {key} is {dtype} of shape {tuple(declared)}; expected uint8 "
                            f"{'images' if 'images' in stem else 'labels'} {shape} as Keras stores them")
        n = int(np.prod(shape))
        data = read_bounded(f, n)
    if len(data) != n:
        raise DataError(f"{path}: {key} is truncated ({len(data):,} of {n:,} bytes)")
    return np.frombuffer(data, np.uint8).reshape(shape, order="F" if fortran else "C").copy()


def _keras_npz(folder: Path, dataset: str) -> Path | None:
    """folder itself when it is an .npz file, else folder/<dataset>.npz if present."""
    if folder.suffix == ".npz" and folder.is_file():
        return folder
    candidate = folder / f"{dataset}.npz"
    return candidate if candidate.is_file() else None


def keras_datasets_dir() -> Path:
    """Where Keras keeps its downloads ($KERAS_HOME or ~/.keras, then datasets/): a mnist.npz there is used."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def _download_one(stem: str, info: DatasetInfo, dest: Path, mirrors: tuple[str, ...], timeout: float) -> Path:
    """Fetch stem.gz from the first mirror that serves a verified copy; write it atomically into dest.

    Each response is read capped (a raw or gzip file is never larger than the raw content, plus a little
    for gzip's framing) and inflated capped at the known size, so a mirror serving a gzip bomb costs
    no more memory than the real file."""
    errors = []
    size = expected_size(stem)
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = read_bounded(response, size + size // 100 + 4096)
        except urllib.error.HTTPError as e:
            errors.append(f"{url}: HTTP {e.code} {e.reason}")
            continue
        except LimitExceeded as e:
            errors.append(f"{url}: response of {e}")
            continue
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {str(getattr(e, 'reason', e))[:100]}")
            continue
        try:
            content = gunzip_capped(io.BytesIO(payload), size) if payload[:2] == b"\x1f\x8b" else payload
        except LimitExceeded:
            errors.append(f"{url}: inflates past {size:,} bytes, the size of {stem}")
            continue
        except (EOFError, zlib.error) as e:
            errors.append(f"{url}: corrupt or truncated download ({str(e)[:80]})")
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest != info.sha256[stem]:
            errors.append(f"{url}: checksum mismatch (got {digest[:12]}..., expected {info.sha256[stem][:12]}...)")
            continue
        target = dest / f"{stem}.gz"
        atomic_write_bytes(target, gzip.compress(content, 6) if payload[:2] != b"\x1f\x8b" else payload)
        return target
    raise DataError(f"could not download {stem}.gz: " + "; ".join(errors))


def download(dataset: str = "mnist", dest: Path | None = None, mirrors: tuple[str, ...] | None = None,
             timeout: float = 30.0) -> Path:
    """Download whichever of the four files dest lacks; returns dest (default: the user cache).

    Stops at the first file no mirror serves (files already fetched are kept) and raises DataError:
    a line saying why, then what to do."""
    info = dataset_info(dataset)
    dest = Path(dest) if dest is not None else cache_dir(dataset)
    mirrors = mirrors or _env_mirrors() or info.mirrors
    for stem in FILES:
        if _find_file(dest, stem) is not None:
            continue
        try:
            _download_one(stem, info, dest, mirrors, timeout)
        except DataError as e:
            files = ", ".join(f"{s}.gz" for s in FILES)
            raise DataError(
                f"{e}\n{info.name} is not available offline. Put the four files ({files}) in {dest}, "
                "or point --data-dir / $DIGITLAB_DATA_DIR at a folder that holds them."
            ) from None
    return dest


def _env_mirrors() -> tuple[str, ...]:
    value = os.environ.get("DIGITLAB_MIRRORS", "")
    return tuple(m for m in value.split(",") if m.strip())


def _holds_other_dataset(folder: Path, dataset: str) -> bool:
    """folder's test labels (10 KB, cheap to hash) are another known dataset's, e.g. MNIST's files where
    Fashion-MNIST is asked for. A corrupt file matches none, and is reported when it is read."""
    path = _find_file(folder, "t10k-labels-idx1-ubyte")
    if path is None:
        return False
    try:
        digest = hashlib.sha256(read_idx_bytes(path, expected_size("t10k-labels-idx1-ubyte"))).hexdigest()
    except DataError:
        return False
    return any(other.sha256["t10k-labels-idx1-ubyte"] == digest for name, other in DATASETS.items() if name != dataset)


def _explicit(folder: Path, dataset: str, origin: str) -> Path | None:
    """Where --data-dir or $DIGITLAB_DATA_DIR has the dataset: the folder, folder/<dataset>, or Keras's
    .npz. For the environment variable only, a folder of another dataset's files is passed over (None):
    the variable is set once for MNIST, and --dataset fashion-mnist should still find Fashion-MNIST."""
    info = dataset_info(dataset)
    if not folder.exists():
        raise DataError(f"{origin} is {folder}, which does not exist")
    for candidate in (folder, folder / dataset):
        if _has_files(candidate):
            if origin == "$DIGITLAB_DATA_DIR" and _holds_other_dataset(candidate, dataset):
                continue
            return candidate
    if npz := _keras_npz(folder, dataset):
        return npz
    if origin == "$DIGITLAB_DATA_DIR" and _holds_other_dataset(folder, dataset):
        return None
    missing = [s for s in FILES if _find_file(folder, s) is None]
    raise DataError(
        f"{origin} is {folder}, but it lacks {missing[0]}.gz{' and others' if len(missing) > 1 else ''} "
        f"(expected the four {info.name} IDX files, gzip or raw, in that folder or in {folder / dataset}; "
        f"the dotted names such as train-images.idx3-ubyte are accepted too, as is Keras's {dataset}.npz)"
    )


def locate(dataset: str = "mnist", data_dir: str | Path | None = None, download_missing: bool = True) -> Path:
    """The folder holding the dataset's four files (or Keras's <dataset>.npz), downloading into the
    cache when none has them (see the module docstring for the order). Raises DataError: an unknown
    dataset, a --data-dir that does not exist or lacks the files, or no copy anywhere and no download."""
    info = dataset_info(dataset)
    if data_dir is not None:
        return _explicit(Path(data_dir).expanduser(), dataset, "--data-dir")  # type: ignore[return-value]
    if env := os.environ.get("DIGITLAB_DATA_DIR"):
        found = _explicit(Path(env).expanduser(), dataset, "$DIGITLAB_DATA_DIR")
        if found is not None:
            return found
    cache = cache_dir(dataset)
    if _has_files(cache):
        return cache
    for system in info.system_dirs:
        if _has_files(Path(system)):
            return Path(system)
    keras = keras_datasets_dir()  # where the tutorial's Keras code left its copy
    if _has_files(keras / dataset):
        return keras / dataset
    if npz := _keras_npz(keras, dataset):
        return npz
    if not download_missing:
        raise DataError(f"{info.name} not found in {cache}; run with downloads allowed or set --data-dir")
    return download(dataset, cache)


def load_mnist(data_dir: str | Path | None = None, dataset: str = "mnist", download: bool = True) -> DigitData:
    """Load and verify a whole MNIST-format dataset (see the module docstring for where it is found).

    Raises DataError naming the file or folder: not found (and not downloadable), unreadable, corrupt,
    larger than the file it should be, or failing its SHA-256 (another dataset's file?)."""
    info = dataset_info(dataset)
    folder = locate(dataset, data_dir, download_missing=download)
    if folder.suffix == ".npz":
        arrays = read_keras_npz(folder, info)
    else:
        arrays = {stem: read_idx_file(_find_file(folder, stem), stem, info) for stem in FILES}
    return DigitData(
        name=info.name,
        classes=info.classes,
        train_images=arrays["train-images-idx3-ubyte"],
        train_labels=arrays["train-labels-idx1-ubyte"],
        test_images=arrays["t10k-images-idx3-ubyte"],
        test_labels=arrays["t10k-labels-idx1-ubyte"],
        source=folder,
    )
