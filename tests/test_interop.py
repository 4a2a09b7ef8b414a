"""Keras files in (both .h5 layouts and .keras), ONNX out: checked against Keras and onnxruntime themselves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import digitlab
from digitlab.config import RECIPES
from digitlab.errors import ModelFileError
from digitlab.interop import export_onnx
from digitlab.model import ARCHITECTURES, count_params
from tests.conftest import run_cli

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def keras():
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


@pytest.mark.parametrize("which", [0, 1], ids=["h5-keras3", "keras-zip"])
def test_keras_predictions_equal(keras_files, mnist, which):
    expected = keras_files[2]
    got = digitlab.load(keras_files[which]).predict(mnist.test_images)
    assert np.abs(got - expected).max() < 1e-5
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert (got.argmax(1) == mnist.test_labels).mean() > 0.8  # Keras trained it: it recognizes digits


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


def test_other_architecture_refused(keras, tmp_path):
    from keras import layers

    other = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(10, activation="softmax")])
    other.save(tmp_path / "mlp.h5")
    other.save(tmp_path / "mlp.keras")
    for name in ("mlp.h5", "mlp.keras"):
        with pytest.raises(ModelFileError, match=r"Flatten -> Dense is not the tutorial's; expected Conv2D"):
            digitlab.load(tmp_path / name)


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


def test_onnx_export_matches(trained_model, mnist, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(trained_model, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # one file, no sidecar, no temporary
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image" and session.get_inputs()[0].shape[1:] == [1, 28, 28]
    x = mnist.test_images[:, None].astype(np.float32) / 255
    got = np.concatenate([session.run(None, {"image": x[i:i + 2500]})[0] for i in range(0, 10000, 2500)])
    ours = trained_model.predict(mnist.test_images)
    assert (got.argmax(1) == ours.argmax(1)).all()
    assert np.abs(got - ours).max() < 1e-5
    assert session.run(None, {"image": x[:1]})[0].shape == (1, 10)  # dynamic batch


def test_export_cli(trained_model_path, tmp_path):
    proc = run_cli("export", trained_model_path, "--onnx", tmp_path / "cli.onnx", check=True)
    n_params = count_params(ARCHITECTURES[RECIPES["fast"].arch])  # the fixture is the fast recipe's net
    assert "cli.onnx" in proc.stdout and (tmp_path / "cli.onnx").stat().st_size > 4 * n_params
