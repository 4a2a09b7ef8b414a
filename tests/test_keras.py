"""Keras files in (both .h5 layouts, .weights.h5 and .keras): checked against Keras itself (slow: Keras
imports in ~6 s and trains), and, fast, against files written here with h5py and zipfile: every setting
that changes the arithmetic refused by name, declared shapes and zip members checked before reading."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import digitlab
from digitlab.errors import ModelFileError
from tests.conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def keras():
    """Keras 3 itself (slow to import): the tests that use it are marked slow."""
    os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 on the torch we already have: no TensorFlow
    return pytest.importorskip("keras")


def tutorial_model(keras):
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, (3, 3), activation="relu", name="conv2d"), layers.MaxPooling2D((2, 2), name="max_pooling2d"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_1"),
        layers.MaxPooling2D((2, 2), name="max_pooling2d_1"),
        layers.Conv2D(64, (3, 3), activation="relu", name="conv2d_2"), layers.Flatten(name="flatten"),
        layers.Dense(64, activation="relu", name="dense"), layers.Dense(10, activation="softmax", name="dense_1"),
    ], name="sequential")


@pytest.fixture(scope="module")
def keras_files(keras, mnist, tmp_path_factory):
    """A Keras model of the tutorial's network, briefly trained by Keras itself, saved both ways."""
    keras.utils.set_random_seed(0)
    model = tutorial_model(keras)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = mnist.train_images[:3000, :, :, None].astype("float32") / 255
    model.fit(x, mnist.train_labels[:3000].astype("int64"), epochs=1, batch_size=64, verbose=0)
    d = tmp_path_factory.mktemp("keras")
    model.save(d / "tutorial.h5")
    model.save(d / "tutorial.keras")
    test = mnist.test_images[:, :, :, None].astype("float32") / 255
    expected = model.predict(test, batch_size=1000, verbose=0)
    return d / "tutorial.h5", d / "tutorial.keras", expected


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["h5-keras3", "keras-zip"])
def test_keras_predictions_equal(keras_files, mnist, which):
    expected = keras_files[2]
    got = digitlab.load(keras_files[which]).predict(mnist.test_images)
    assert np.abs(got - expected).max() < 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert (got.argmax(1) == mnist.test_labels).mean() > 0.8  # Keras trained it: it recognizes digits


@pytest.mark.slow
def test_keras_files_with_layer_names_of_their_own(keras, keras_files, mnist, tmp_path):
    """Keras 3 stores weights by layer class (layers/conv2d/vars), not by name: a functional model with
    its own layer names (or a notebook's second model, conv2d_3...) and a bare save_weights() file load."""
    from keras import layers

    trained = keras.models.load_model(keras_files[1])
    i = keras.Input((28, 28, 1))
    h = layers.MaxPooling2D(2)(layers.Conv2D(32, 3, activation="relu", name="c1")(i))
    h = layers.MaxPooling2D(2)(layers.Conv2D(64, 3, activation="relu", name="c2")(h))
    h = layers.Flatten()(layers.Conv2D(64, 3, activation="relu", name="c3")(h))
    out = layers.Dense(10, activation="softmax", name="digit")(layers.Dense(64, activation="relu", name="d1")(h))
    model = keras.Model(i, out)
    model.set_weights(trained.get_weights())
    for name in ("named.keras", "named.h5", "named.weights.h5"):
        (model.save_weights if name.endswith(".weights.h5") else model.save)(tmp_path / name)
        got = digitlab.load(tmp_path / name).predict(mnist.test_images[:500])
        assert np.abs(got - keras_files[2][:500]).max() < 1e-5, name


def test_keras2_layout_fixture(mnist):
    """A file written by tf.keras 2 (tensorflow + tf-keras), committed with the script that made it."""
    path = FIXTURES / "keras2_tutorial.h5"
    expected = np.asarray(json.loads((FIXTURES / "keras2_tutorial_predictions.json").read_text()), np.float32)
    import h5py

    with h5py.File(path) as f:  # really the Keras 2 layout: weights named layer/layer/kernel:0
        names = [n.decode() if isinstance(n, bytes) else n for n in f["model_weights/conv2d"].attrs["weight_names"]]
    assert names == ["conv2d/kernel:0", "conv2d/bias:0"]
    got = digitlab.load(path).predict(mnist.test_images[: len(expected)])
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.slow
def test_import_keras_cli_and_direct_use(keras_files, tmp_path, mnist):
    out = tmp_path / "imported.safetensors"
    run_cli("import-keras", keras_files[0], "--out", out, check=True)
    m = digitlab.load(out)
    assert m.metadata["source"]["keras_file"] == "tutorial.h5"
    assert np.abs(m.predict(mnist.test_images[:500]) - keras_files[2][:500]).max() < 1e-5
    direct = json.loads(run_cli("evaluate", keras_files[1], "--json", check=True).stdout)
    via_file = json.loads(run_cli("evaluate", out, "--json", check=True).stdout)
    assert direct["accuracy"] == via_file["accuracy"]
    pred = json.loads(run_cli("predict", keras_files[0], "--index", "0", "--json", check=True).stdout)
    assert pred[0]["digit"] == int(keras_files[2][0].argmax())


@pytest.mark.slow
def test_other_architecture_refused(keras, tmp_path):
    from keras import layers

    other = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(10, activation="softmax")])
    other.save(tmp_path / "mlp.h5")
    other.save(tmp_path / "mlp.keras")
    for name in ("mlp.h5", "mlp.keras"):
        with pytest.raises(ModelFileError, match=r"Flatten -> Dense is not the tutorial's; expected Conv2D"):
            digitlab.load(tmp_path / name)


@pytest.mark.slow
def test_truncated_and_foreign_keras_files(keras_files, tmp_path):
    for src in keras_files[:2]:
        cut = tmp_path / f"cut{src.suffix}"
        cut.write_bytes(src.read_bytes()[:5000])
        with pytest.raises(ModelFileError, match=f"cut{src.suffix}: .*(truncated|damaged)"):
            digitlab.load(cut)
    fake = tmp_path / "fake.h5"
    fake.write_text("not keras")
    with pytest.raises(ModelFileError, match="fake.h5: neither an HDF5"):
        digitlab.load(fake)
    proc = run_cli("import-keras", fake, "--out", tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "fake.h5" in proc.stderr and "Traceback" not in proc.stderr


# --- fast: files written here with h5py and zipfile (no Keras import) -----------------------------------

KERAS2 = FIXTURES / "keras2_tutorial.h5"
KERAS2_EXPECTED = FIXTURES / "keras2_tutorial_predictions.json"


def _keras_arrays() -> list[np.ndarray]:
    """The fixture's weights in Keras's layout and layer order."""
    from digitlab.keras import _read_h5

    return _read_h5(KERAS2)[0]


def _keras3_zip(path: Path, config: dict | None = None, weights: bytes | None = None, **members: bytes) -> Path:
    """A Keras 3 .keras archive of the fixture's weights: config.json (Keras 3.15.1's, as model.save
    wrote it), metadata.json and model.weights.h5 (layers/<class key>/vars/<i>)."""
    import io
    import zipfile

    import h5py

    if weights is None:
        buffer = io.BytesIO()
        arrays = iter(_keras_arrays())
        with h5py.File(buffer, "w") as f:
            for key in ("conv2d", "conv2d_1", "conv2d_2", "dense", "dense_1"):
                for i in range(2):
                    f.create_dataset(f"layers/{key}/vars/{i}", data=next(arrays))
        weights = buffer.getvalue()
    config = config or json.loads((FIXTURES / "keras3_tutorial_config.json").read_text())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", weights)
        for name, body in members.items():
            z.writestr(name, body)
    return path


def test_keras3_zip_built_here_loads(tmp_path, mnist):
    expected = np.asarray(json.loads(KERAS2_EXPECTED.read_text()), np.float32)
    m = digitlab.load(_keras3_zip(tmp_path / "k3.keras"))
    assert m.metadata["source"] == {"keras_file": "k3.keras", "keras_version": "3.15.1", "format": "keras"}
    assert np.abs(m.predict(mnist.test_images[: len(expected)]) - expected).max() < 1e-5


def _with_setting(config: dict, layer: int, key: str, value) -> dict:
    config = json.loads(json.dumps(config))
    config["config"]["layers"][layer]["config"][key] = value
    return config


# (layer index in the Keras 3 config (0 is the InputLayer), setting, value the file declares)
REFUSED = [
    (1, "padding", "same"), (1, "strides", [2, 2]), (3, "dilation_rate", [2, 2]), (3, "groups", 2),
    (5, "use_bias", False), (1, "activation", "tanh"), (1, "data_format", "channels_first"),
    (1, "kernel_size", [5, 5]), (1, "filters", 16), (2, "pool_size", [3, 3]), (2, "strides", [1, 1]),
    (2, "padding", "same"), (4, "data_format", "channels_first"), (6, "data_format", "channels_first"),
    (7, "units", 32), (8, "activation", "linear"), (7, "use_bias", False), (7, "lora_rank", 4),
    (1, "dtype", "mixed_float16"), (7, "quantization_config", {"mode": "int8"}), (0, "batch_shape", [None, 32, 32, 1]),
    (0, "sparse", True), (1, "some_new_setting", 1), (1, "use_bias", 1),
]


@pytest.mark.parametrize(("layer", "key", "value"), REFUSED, ids=[f"{i}-{k}" for i, k, _ in REFUSED])
def test_every_arithmetic_setting_refused_by_name(tmp_path, layer, key, value):
    """These were ignored: a channels_first, padded, strided or dilated net loaded and answered wrongly."""
    base = json.loads((FIXTURES / "keras3_tutorial_config.json").read_text())
    path = _keras3_zip(tmp_path / "k.keras", _with_setting(base, layer, key, value))
    with pytest.raises(ModelFileError) as e:
        digitlab.load(path)
    text = str(e.value)
    assert "k.keras: layer " in text and key in text and "\n" not in text and len(text) < 600, text


def test_settings_refused_in_h5_config_too(tmp_path):
    import shutil

    import h5py

    path = shutil.copy(KERAS2, tmp_path / "k2.h5")
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(_with_setting(config, 1, "padding", "same"))
    with pytest.raises(ModelFileError, match=r"k2.h5: layer conv2d \(Conv2D\): padding = 'same' is not supported"):
        digitlab.load(path)


def test_default_settings_honoured(tmp_path, mnist):
    """Settings left out take Keras's defaults (strides 1, valid padding...), which digitlab computes."""
    base = json.loads((FIXTURES / "keras3_tutorial_config.json").read_text())
    for layer in (1, 3, 5):
        for key in ("strides", "padding", "dilation_rate", "groups", "use_bias", "data_format"):
            del base["config"]["layers"][layer]["config"][key]
    expected = np.asarray(json.loads(KERAS2_EXPECTED.read_text()), np.float32)
    got = digitlab.load(_keras3_zip(tmp_path / "k.keras", base)).predict(mnist.test_images[: len(expected)])
    assert np.abs(got - expected).max() < 1e-5


def test_huge_declared_dataset_refused_before_reading(tmp_path):
    """A few-KB .h5 declaring a 1.6 GB kernel made the importer allocate it; its shape is checked first."""
    import shutil

    import h5py

    path = shutil.copy(KERAS2, tmp_path / "huge.h5")
    with h5py.File(path, "r+") as f:
        group = f["model_weights/conv2d/conv2d"]
        del group["kernel:0"]
        group.create_dataset("kernel:0", shape=(20000, 20000), dtype="f4", chunks=(100, 100))  # no data written
    with pytest.raises(ModelFileError, match=r"huge.h5: conv2d/conv2d/kernel:0 is float32 of shape \(20000, 20000\); "
                                             r"expected float32 \(3, 3, 1, 32\)"):
        digitlab.load(path)


def test_integer_weights_refused(tmp_path):
    import shutil

    import h5py

    path = shutil.copy(KERAS2, tmp_path / "ints.h5")
    with h5py.File(path, "r+") as f:
        group = f["model_weights/dense_1/dense_1"]
        data = group["bias:0"][()]
        del group["bias:0"]
        group.create_dataset("bias:0", data=data.astype("i4"))
    with pytest.raises(ModelFileError, match=r"ints.h5: dense_1/dense_1/bias:0 is int32"):
        digitlab.load(path)


def test_zip_members_size_capped(tmp_path):
    """A 2 MB .keras inflated to 4.2 GB; members are checked against their declared size, then read capped."""
    big_weights = _keras3_zip(tmp_path / "w.keras", weights=b"\0" * (9 << 20))
    with pytest.raises(ModelFileError, match=r"w.keras: model.weights.h5 declares 9,437,184 bytes, over the"):
        digitlab.load(big_weights)
    big_config = tmp_path / "c.keras"
    import zipfile

    with zipfile.ZipFile(big_config, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", b" " * (2 << 20))
    with pytest.raises(ModelFileError, match=r"c.keras: config.json declares 2,097,152 bytes"):
        digitlab.load(big_config)


def test_wrong_variables_in_keras3_weights(tmp_path):
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("layers/conv2d/vars/0", data=np.zeros((3, 3, 1, 32), np.float32))
    with pytest.raises(ModelFileError, match=r"layers/conv2d/vars holds 1 variables; expected a kernel and a bias"):
        digitlab.load(_keras3_zip(tmp_path / "v.keras", weights=buffer.getvalue()))


def test_truncated_and_foreign_files_fast(tmp_path):
    whole = _keras3_zip(tmp_path / "whole.keras").read_bytes()
    for name, body in (("cut.keras", whole[:5000]), ("cut.h5", KERAS2.read_bytes()[:5000])):
        (tmp_path / name).write_bytes(body)
        with pytest.raises(ModelFileError, match=f"{name}: .*(truncated|damaged)"):
            digitlab.load(tmp_path / name)
    fake = tmp_path / "fake.h5"
    fake.write_text("not keras")
    with pytest.raises(ModelFileError, match="fake.h5: neither an HDF5"):
        digitlab.load(fake)


def test_keras_file_under_another_name_is_read_as_keras(tmp_path, mnist):
    """File types are told apart by content too (modelfile.load, the one place that dispatches)."""
    renamed = tmp_path / "model.safetensors"
    _keras3_zip(renamed)
    assert digitlab.load(renamed).metadata["source"]["format"] == "keras"


def test_import_keras_writes_a_checked_model_file(tmp_path, mnist):
    from digitlab.modelfile import import_keras

    out = import_keras(KERAS2, tmp_path / "imported.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = digitlab.load(out)
    assert m.metadata["source"]["keras_file"] == "keras2_tutorial.h5" and m.metadata["tensors_sha256"]
    expected = np.asarray(json.loads(KERAS2_EXPECTED.read_text()), np.float32)
    assert np.abs(m.predict(mnist.test_images[: len(expected)]) - expected).max() < 1e-5
