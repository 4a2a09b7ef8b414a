"""Shared fixtures. MNIST is found through $DIGITLAB_DATA_DIR (scripts/test.sh sets it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digitlab.data import load_mnist
from digitlab.training import train

# Fixtures that train on the full MNIST training set: every test using one is slow (see below).
FULL_TRAINING_FIXTURES = {"trained_model_path", "trained_model", "piece_verifier_path", "piece_verifier"}
# The shared trained model's settings (with the `fast` recipe's optimizer and schedule): the former `fast`.
FIXTURE_NET = dict(arch="small", batch_size=128, lr=5e-3, beta1=0.9, beta2=0.999, label_smoothing=0.0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that needs a model trained on all 60,000 images, so that the fast lane
    (`scripts/test.sh -m "not slow"`) never trains one; tests that train for long themselves carry the
    marker in their own file."""
    for item in items:
        if FULL_TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    value = os.environ.get("DIGITLAB_DATA_DIR")
    if not value:
        pytest.fail("set DIGITLAB_DATA_DIR to the folder with the MNIST IDX files (scripts/test.sh does)")
    return Path(value)


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    return load_mnist(mnist_dir)


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory, mnist_dir) -> Path:
    """One real epoch on the full MNIST training set (the `small` net, Adam 5e-3 one-cycle, batch 128: the
    `fast` recipe before it became the 1-epoch CPU record, pinned here so that the model the tests rely on
    stays the same), shared by the tests that need a model that recognizes digits (end-to-end accuracy,
    preprocessing, server, browser). One epoch of the `seed` recipe lands anywhere in 97.7-98.4%."""
    out = tmp_path_factory.mktemp("trained") / "mnist.safetensors"
    # threads=2: an earlier in-process test may have left torch on one thread, and a different summation
    # order gives a (slightly) different model: the same model whatever ran before (or was deselected)
    train(recipe="fast", **FIXTURE_NET, epochs=1, out=str(out), data_dir=str(mnist_dir), quiet=True, seed=0,
          threads=2)
    return out


@pytest.fixture(scope="session")
def trained_model(trained_model_path):
    import digitlab

    return digitlab.load(trained_model_path)


@pytest.fixture(scope="session")
def piece_verifier_path(tmp_path_factory, mnist_dir) -> Path:
    """A piece verifier (digitlab.pieces) trained briefly: pieces of 400 synthetic numbers, 3 epochs."""
    from digitlab.pieces import train_verifier

    out = tmp_path_factory.mktemp("pieces") / "mnist.pieces.safetensors"
    train_verifier(out, strings=400, epochs=3, seed=0, data_dir=str(mnist_dir))
    return out


@pytest.fixture(scope="session")
def piece_verifier(piece_verifier_path):
    from digitlab.pieces import load_verifier

    return load_verifier(piece_verifier_path)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, mnist_dir) -> Path:
    """A quick model (2,000 images) for tests that need a valid file, not accuracy."""
    out = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    train(epochs=1, limit=2000, test_limit=1000, out=str(out), data_dir=str(mnist_dir), quiet=True)
    return out


def run_cli(*args: str, check: bool = False, **kw) -> subprocess.CompletedProcess:
    """The real `digitlab` command in a subprocess."""
    proc = subprocess.run([sys.executable, "-m", "digitlab", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"digitlab {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def forward_calls(monkeypatch) -> list[int]:
    """The batch size of every DigitModel.forward call (the network's one door) made during the test."""
    from digitlab.modelfile import DigitModel

    calls: list[int] = []
    real = DigitModel.forward

    def counted(self, images, batch_size=1024):
        calls.append(len(images))
        return real(self, images, batch_size)

    monkeypatch.setattr(DigitModel, "forward", counted)
    return calls
