from __future__ import annotations

import gzip
import hashlib
import http.server
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from digitlab import data
from digitlab.errors import DataError

STEMS = data.FILES


@pytest.fixture(autouse=True)
def no_keras_copy(tmp_path, monkeypatch):
    """Whatever ~/.keras holds on this machine stays out of the tests' lookups."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def test_load_mnist_shapes_and_checksums(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels.shape == (60000,) and set(np.unique(mnist.test_labels)) == set(range(10))
    # Known facts about MNIST, not our own output: pixel mean 0.1307 and first test label 7.
    assert abs(mnist.train_images.mean() / 255 - 0.1307) < 1e-3
    assert mnist.test_labels[0] == 7


def test_checksums_match_shared_file(mnist_dir):
    sums = dict(reversed(line.split()) for line in (mnist_dir / "SHA256SUMS.idx").read_text().splitlines())
    assert sums == data.DATASETS["mnist"].sha256


@pytest.fixture
def copy_dir(tmp_path, mnist_dir) -> Path:
    """A writable copy of the four gzip files."""
    d = tmp_path / "copy"
    d.mkdir()
    for stem in STEMS:
        shutil.copy(mnist_dir / f"{stem}.gz", d / f"{stem}.gz")
    return d


def test_raw_files_work_too(copy_dir):
    for stem in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        raw = gzip.decompress((copy_dir / f"{stem}.gz").read_bytes())
        (copy_dir / f"{stem}.gz").unlink()
        (copy_dir / stem).write_bytes(raw)
    d = data.load_mnist(copy_dir)
    assert d.test_images.shape == (10000, 28, 28)


def test_dotted_file_names_work_too(copy_dir):
    """Kaggle's and some mirrors' spelling: train-images.idx3-ubyte, raw or gzip."""
    for stem in STEMS:
        dotted = stem.replace("-idx", ".idx")
        if stem.startswith("t10k"):
            (copy_dir / dotted).write_bytes(gzip.decompress((copy_dir / f"{stem}.gz").read_bytes()))
            (copy_dir / f"{stem}.gz").unlink()
        else:
            (copy_dir / f"{stem}.gz").rename(copy_dir / f"{dotted}.gz")
    d = data.load_mnist(copy_dir)
    assert d.train_images.shape == (60000, 28, 28) and d.test_labels.shape == (10000,)


def _replace(copy_dir: Path, stem: str, content: bytes, gz: bool = True) -> Path:
    (copy_dir / f"{stem}.gz").unlink()
    path = copy_dir / (f"{stem}.gz" if gz else stem)
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def test_truncated_gzip_names_file(copy_dir):
    path = copy_dir / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*(truncated|corrupt)"):
        data.load_mnist(copy_dir)


def test_checksum_mismatch_names_file(copy_dir):
    raw = bytearray(gzip.decompress((copy_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    _replace(copy_dir, "t10k-labels-idx1-ubyte", bytes(raw))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*SHA-256.*expected"):
        data.load_mnist(copy_dir)


def test_parse_idx_errors():
    good = (2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    assert list(data.parse_idx(good, "f", "labels", 3)) == [1, 2, 3]
    with pytest.raises(DataError, match="f: wrong magic number 2051.*expected 2049"):
        data.parse_idx((2051).to_bytes(4, "big") + good[4:], "f", "labels", 3)
    with pytest.raises(DataError, match=r"f: wrong dimensions \[4\]; expected \[3\]"):
        data.parse_idx(good[:4] + (4).to_bytes(4, "big") + bytes(4), "f", "labels", 3)
    with pytest.raises(DataError, match="f: truncated"):
        data.parse_idx(good[:-1], "f", "labels", 3)
    with pytest.raises(DataError, match="too short"):
        data.parse_idx(b"\x00\x00", "f", "labels", 3)
    with pytest.raises(DataError, match="label 12 out of range"):
        data.parse_idx(good[:-1] + bytes([12]), "f", "labels", 3)
    img = (2051).to_bytes(4, "big") + (1).to_bytes(4, "big") + (28).to_bytes(4, "big") + (27).to_bytes(4, "big")
    with pytest.raises(DataError, match=r"wrong dimensions \[1, 28, 27\]; expected \[1, 28, 28\]"):
        data.parse_idx(img + bytes(28 * 27), "f", "images", 1)


def test_missing_files_in_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir is .* lacks .*train-images-idx3-ubyte.gz"):
        data.load_mnist(tmp_path)


def test_env_var_is_used(monkeypatch, mnist_dir, tmp_path):
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"\$DIGITLAB_DATA_DIR"):
        data.locate("mnist")
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(mnist_dir))
    assert data.locate("mnist") == mnist_dir


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'emnist'"):
        data.load_mnist(dataset="emnist")


# --- downloading, against a local HTTP server on 127.0.0.1 -------------------------------------------

class _Server:
    """Serves a folder on 127.0.0.1; `files` maps a name to the bytes to send (None: 404)."""

    def __init__(self, files: dict[str, bytes]):
        files_ = files
        self.requested: list[str] = []
        requested = self.requested

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                requested.append(self.path.rsplit("/", 1)[-1])
                body = files_.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def good_files(mnist_dir) -> dict[str, bytes]:
    return {f"{s}.gz": (mnist_dir / f"{s}.gz").read_bytes() for s in STEMS}


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def test_download_good(tmp_path, good_files):
    server = _Server(good_files)
    try:
        dest = data.download("mnist", tmp_path / "cache", mirrors=(server.url,))
    finally:
        server.close()
    for stem in STEMS:
        content = gzip.decompress((dest / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == data.DATASETS["mnist"].sha256[stem]
    assert not list(dest.glob(".*part"))
    assert data.load_mnist(dest).test_images.shape == (10000, 28, 28)


@pytest.mark.slow  # two full downloads of MNIST over loopback
def test_download_falls_back_to_next_mirror(tmp_path, good_files):
    bad = dict(good_files)
    bad["t10k-labels-idx1-ubyte.gz"] = good_files["t10k-labels-idx1-ubyte.gz"][:500]  # truncated
    first, second = _Server(bad), _Server(good_files)
    try:
        dest = data.download("mnist", tmp_path / "c", mirrors=(_closed_port_url(), first.url, second.url))
    finally:
        first.close()
        second.close()
    assert data.load_mnist(dest).test_labels.shape == (10000,)


@pytest.mark.parametrize("damage", ["truncated", pytest.param("wrong_checksum", marks=pytest.mark.slow),
                                    pytest.param("missing", marks=pytest.mark.slow)])
def test_download_bad_file_leaves_nothing(tmp_path, good_files, damage):
    files = dict(good_files)
    name = "t10k-labels-idx1-ubyte.gz"
    if damage == "truncated":
        files[name] = files[name][: len(files[name]) // 2]
    elif damage == "wrong_checksum":
        files[name] = gzip.compress(b"\x00" * 10008)
    else:
        files[name] = None
    server = _Server(files)
    dest = tmp_path / "cache"
    try:
        with pytest.raises(DataError) as err:
            data.download("mnist", dest, mirrors=(server.url,))
    finally:
        server.close()
    message = str(err.value)
    expected = {"truncated": "truncated", "wrong_checksum": "checksum mismatch", "missing": "404"}[damage]
    assert expected in message and name in message
    assert "Put the four files" in message and str(dest) in message
    assert not (dest / name).exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no half-written temporary file
    assert (dest / "t10k-images-idx3-ubyte.gz").exists()  # the good files are kept


def test_server_down_gives_offline_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DIGITLAB_MIRRORS", _closed_port_url())
    with pytest.raises(DataError, match="not available offline.*Put the four files"):
        data.load_mnist()
    assert data.cache_dir("mnist") == tmp_path / "xdg" / "digitlab" / "mnist"


def test_cache_is_used(tmp_path, monkeypatch, good_files):
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = data.cache_dir("mnist")
    cache.mkdir(parents=True)
    for name, body in good_files.items():
        (cache / name).write_bytes(body)
    monkeypatch.setenv("DIGITLAB_MIRRORS", _closed_port_url())  # would fail if it tried to download
    assert data.load_mnist().source == cache


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist(monkeypatch, tmp_path):
    d = data.load_mnist(FASHION, dataset="fashion-mnist")
    assert d.classes[9] == "Ankle boot" and d.train_images.shape == (60000, 28, 28)
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # empty cache: falls back to Debian's folder
    assert data.locate("fashion-mnist", download_missing=False) == FASHION


def _keras_npz(mnist, path: Path, **changes) -> Path:
    """mnist.npz as keras.datasets.mnist caches it: uint8 arrays x_train, y_train, x_test, y_test."""
    arrays = {"x_train": mnist.train_images, "y_train": mnist.train_labels, "x_test": mnist.test_images,
              "y_test": mnist.test_labels, **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.slow  # writes four mnist.npz files of all 70,000 digits: ~4 s
def test_keras_npz(mnist, tmp_path, monkeypatch):
    """The tutorial's Keras code leaves ~/.keras/datasets/mnist.npz: used as given, or found there,
    and held to the IDX files' checksums."""
    npz = _keras_npz(mnist, tmp_path / "keras-home" / "datasets" / "mnist.npz")
    for given in (npz, npz.parent):
        d = data.load_mnist(given)
        assert d.source == npz and (d.train_images == mnist.train_images).all()
        assert (d.test_labels == mnist.test_labels).all()
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # nothing cached: Keras's copy, no download
    monkeypatch.setenv("DIGITLAB_MIRRORS", _closed_port_url())
    assert data.load_mnist().source == npz

    altered = mnist.test_images.copy()
    altered[0, 14, 14] ^= 1
    bad = _keras_npz(mnist, tmp_path / "altered" / "mnist.npz", x_test=altered)
    with pytest.raises(DataError, match=r"altered/mnist.npz \(x_test\): SHA-256"):
        data.load_mnist(bad)
    floats = _keras_npz(mnist, tmp_path / "floats" / "mnist.npz", x_train=mnist.train_images[:10] / 255.0)
    with pytest.raises(DataError, match=r"floats/mnist.npz: x_train is float64 of shape \(10, 28, 28\); expected"):
        data.load_mnist(floats)
    pickled = _keras_npz(mnist, tmp_path / "pickled" / "mnist.npz", x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled/mnist.npz: not a readable Keras dataset .npz.*allow_pickle"):
        data.load_mnist(pickled)


def test_mnist_files_are_not_fashion(mnist_dir):
    with pytest.raises(DataError, match="fashion-mnist.*different dataset"):
        data.load_mnist(mnist_dir, dataset="fashion-mnist")


def test_no_hardcoded_shared_path():
    src = Path(data.__file__).parent
    assert not [p for p in src.rglob("*.py") if "shared/mnist" in p.read_text()]
    assert os.environ.get("DIGITLAB_DATA_DIR")  # the tests themselves found the data this way


# --- bounded memory and the newcomer's path (issues 12 and 13) ------------------------------------------

def _gzip_of_zeros(n: int) -> bytes:
    return gzip.compress(b"\0" * n, 9)  # ~1,000:1


def test_expected_sizes():
    assert [data.expected_size(s) for s in STEMS] == [47_040_016, 60_008, 7_840_016, 10_008]


def test_gzip_bomb_in_data_folder_refused_at_the_known_size(copy_dir):
    """A 2 MB gzip inflated to 4.2 GB before the checksum failed; now inflation stops past 10,008 bytes."""
    (copy_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(_gzip_of_zeros(30_000_000))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: inflates to more than the 10,008-byte limit"):
        data.load_mnist(copy_dir)


def test_oversized_raw_file_refused_before_reading(copy_dir):
    _replace(copy_dir, "t10k-labels-idx1-ubyte", b"\0" * 20_000, gz=False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: 20,000 bytes, over the 10,008-byte limit"):
        data.load_mnist(copy_dir)


def test_download_bomb_refused(tmp_path, good_files):
    bomb = _gzip_of_zeros(5_000_000)
    assert len(bomb) < 10_008  # small enough to be downloaded: the inflation is what is capped
    files = {**good_files, "t10k-labels-idx1-ubyte.gz": bomb}
    server = _Server(files)
    try:
        with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: inflates past 10,008 bytes"):
            data.download("mnist", tmp_path / "cache", mirrors=(server.url,))
    finally:
        server.close()
    assert not (tmp_path / "cache" / "t10k-labels-idx1-ubyte.gz").exists()


def _npz_declaring(path: Path, key: str, shape: tuple[int, ...], dtype: str = "|u1") -> Path:
    """An .npz whose member declares shape but holds 100 bytes."""
    import io
    import zipfile

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{key}.npy", buffer.getvalue() + bytes(100))
    return path


def test_npz_declaring_a_huge_shape_refused_before_allocating(tmp_path):
    path = _npz_declaring(tmp_path / "mnist.npz", "x_train", (10**6, 10**6, 28))
    with pytest.raises(DataError, match=r"mnist.npz: x_train is uint8 of shape \(1000000, 1000000, 28\); "
                                        r"expected uint8 images \(60000, 28, 28\)"):
        data.load_mnist(path)
    _npz_declaring(path, "x_train", (60000, 28, 28))
    with pytest.raises(DataError, match=r"mnist.npz: x_train is truncated \(100 of 47,040,000 bytes\)"):
        data.load_mnist(path)
    _npz_declaring(path, "x_train", (3,), dtype="|O")
    with pytest.raises(DataError, match=r"not a readable Keras dataset .npz.*allow_pickle"):
        data.load_mnist(path)


def test_data_dir_that_does_not_exist(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"--data-dir is /nonexistent/mnist, which does not exist$"):
        data.load_mnist("/nonexistent/mnist")
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataError, match=r"\$DIGITLAB_DATA_DIR is .*gone, which does not exist$"):
        data.locate("mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_env_var_folder_of_another_dataset_is_passed_over(monkeypatch, mnist_dir, tmp_path):
    """$DIGITLAB_DATA_DIR set for MNIST (as the README and scripts/test.sh do) no longer stops
    --dataset fashion-mnist with a checksum error: Debian's copy is found next."""
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.locate("fashion-mnist", download_missing=False) == FASHION
    assert data.locate("mnist", download_missing=False) == mnist_dir
    with pytest.raises(DataError, match="different dataset"):  # asked for explicitly: still an error
        data.load_mnist(mnist_dir, dataset="fashion-mnist")


def test_env_var_folder_with_a_corrupt_file_is_still_reported(monkeypatch, copy_dir, tmp_path):
    raw = bytearray(gzip.decompress((copy_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    _replace(copy_dir, "t10k-labels-idx1-ubyte", bytes(raw))
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(copy_dir))
    with pytest.raises(DataError, match="SHA-256"):
        data.load_mnist()


def test_offline_stops_at_the_first_file_in_three_lines(tmp_path, monkeypatch):
    """Offline, evaluate tried all four files and printed 16 lines."""
    server = _Server({})
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("DIGITLAB_MIRRORS", f"{server.url},{_closed_port_url()}")
    try:
        with pytest.raises(DataError) as err:
            data.load_mnist()
    finally:
        server.close()
    lines = str(err.value).splitlines()
    assert len(lines) <= 3, lines
    assert lines[0].startswith("could not download train-images-idx3-ubyte.gz: ") and "HTTP 404" in lines[0]
    assert "not available offline. Put the four files" in lines[-1]
    assert server.requested == ["train-images-idx3-ubyte.gz"]
