"""The training loop: reproducibility, resume, stop signals, outputs, precision."""

from __future__ import annotations

import errno
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import digitlab
from digitlab import training, trust
from digitlab.checkpoint import checkpoint_path, read_checkpoint
from digitlab.config import RECIPES
from digitlab.data import load_mnist
from digitlab.errors import DigitlabError
from digitlab.hardware import cpu_info, native_bf16
from digitlab.training import TrainingInterrupted, history_path, train
from tests.conftest import FIXTURE_NET

QUICK = {"epochs": 2, "limit": 640, "test_limit": 500, "quiet": True}  # 10 steps of 64 per epoch; 500 test images
RESUMABLE = dict(QUICK, seed=7, optimizer="adam", augment=True)  # every kind of state a checkpoint holds


def mnist_images(mnist_dir) -> np.ndarray:
    return load_mnist(mnist_dir).train_images


def test_end_to_end_one_epoch_full_mnist(trained_model, mnist):
    """The real thing: one epoch on all 60,000 images, then the 10,000 test images."""
    acc = (trained_model.predict(mnist.test_images).argmax(1) == mnist.test_labels).mean()
    assert acc >= 0.98, acc
    assert abs(trained_model.metadata["test_metrics"]["accuracy"] - acc) < 1e-3
    t = trained_model.metadata["training"]
    assert (t["epochs"], t["train_images"], t["arch"]) == (1, 60000, FIXTURE_NET["arch"])


@pytest.mark.slow
def test_fast_recipe_reaches_99_percent(tmp_path, mnist_dir):
    """The `fast` recipe as `digitlab train --recipe fast` runs it: one epoch, then the test set. Over seeds
    0-4 it averages 99% or more (benchmarks/record.py); each seed alone lands within 98.9-99.2% here."""
    m = train(recipe="fast", out=str(tmp_path / "fast.safetensors"), data_dir=str(mnist_dir), quiet=True, seed=0)
    assert m.metadata["training"]["arch"] == "quick" and len(m.metadata["history"]["seconds"]) == 1
    assert m.metadata["test_metrics"]["accuracy"] >= 0.989


@pytest.mark.slow  # two short trainings (~1.5 s): the fast lane keeps under a minute
def test_same_seed_same_weights(tmp_path, mnist_dir):
    short = {"epochs": 1, "limit": 320, "test_limit": 100, "quiet": True, "augment": True,  # 5 steps
             "data_dir": str(mnist_dir)}
    a = train(**short, seed=3, out=str(tmp_path / "a.safetensors"))
    b = train(**short, seed=3, out=str(tmp_path / "b.safetensors"))
    c = train(**short, seed=4, out=str(tmp_path / "c.safetensors"))
    for k in a.weights:
        assert np.array_equal(a.weights[k], b.weights[k]), k
    assert not np.array_equal(a.weights["dense.weight"], c.weights["dense.weight"])


def test_files_written_history_and_val_split(tmp_path, mnist_dir):
    out = tmp_path / "m.safetensors"
    m = train(**QUICK, val_split=0.2, out=str(out), data_dir=str(mnist_dir))
    hist = json.loads(history_path(out).read_text())
    assert set(hist["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert len(hist["history"]["loss"]) == 2 and hist["config"]["val_split"] == 0.2
    assert m.metadata["training"]["train_images"] == 512
    assert digitlab.load(out).metadata["history"] == hist["history"]
    assert digitlab.load(out).metadata["test_metrics"] == hist["test"]
    assert not checkpoint_path(out).exists()  # removed once training completes
    # The abstention threshold, calibrated on the 128 validation digits for at most 1% false rejects with
    # 99% confidence (energy: no negatives), stored in the file and read back checked.
    cal = digitlab.load(out).metadata["calibration"]
    assert cal == m.metadata["calibration"] and cal["method"] == "energy" and cal["target_frr"] == 0.01
    assert cal["source"].startswith("128 validation digits held out") and "99% confidence" in cal["source"]
    val = m.logits(mnist_images(mnist_dir)[512:640])
    expected = trust.calibrate(trust.energy_score(val), 0.01, confidence=0.99)
    assert cal["threshold"] == pytest.approx(expected, abs=1e-4)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_dir):
    """The reference run that every interrupted-and-resumed run must reproduce exactly."""
    return train(**RESUMABLE, out=str(tmp_path_factory.mktemp("ref") / "ref.safetensors"), data_dir=str(mnist_dir))


@pytest.mark.parametrize("stop_at", [  # mid-epoch 1, mid-epoch 2, right after the last step; the fast lane keeps one
    pytest.param(3, marks=pytest.mark.slow), 13, pytest.param(20, marks=pytest.mark.slow)])
def test_resume_gives_the_same_result(tmp_path, mnist_dir, uninterrupted, stop_at):
    out = tmp_path / "run.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train(**RESUMABLE, out=str(out), data_dir=str(mnist_dir), stop_after_steps=stop_at)
    assert info.value.checkpoint == checkpoint_path(out) and info.value.checkpoint.exists()
    assert not out.exists()  # no half model: only the checkpoint
    ckpt = read_checkpoint(info.value.checkpoint)
    assert (ckpt.epoch, ckpt.step) == divmod(stop_at, 10)
    # stop_after_steps=0 on resume: any step left to run would stop it at once. After the last step
    # nothing is left: the resumed run must only save and test, never redo the last epoch.
    resumed = train(resume=str(info.value.checkpoint), quiet=True, stop_after_steps=0 if stop_at == 20 else None)
    for k in uninterrupted.weights:
        assert np.array_equal(uninterrupted.weights[k], resumed.weights[k]), k
    assert resumed.metadata["history"]["loss"] == uninterrupted.metadata["history"]["loss"]
    assert resumed.metadata["test_metrics"] == uninterrupted.metadata["test_metrics"]


@pytest.mark.slow  # three short trainings of a batch-norm net: ~10 s on a quiet machine
def test_batch_norm_nets_resume(tmp_path, mnist_dir):
    """A batch-norm net (best's lean-bn) stopped and resumed: it once failed to load its own checkpoint
    (PyTorch's BatchNorm adds a step counter to weights read back from a file)."""
    settings = dict(QUICK, arch="lean-bn", seed=3, data_dir=str(mnist_dir))
    full = train(**settings, out=str(tmp_path / "full.safetensors"))
    with pytest.raises(TrainingInterrupted) as info:
        train(**settings, out=str(tmp_path / "run.safetensors"), stop_after_steps=13)
    resumed = train(resume=str(info.value.checkpoint), quiet=True)
    for k in full.weights:
        assert np.array_equal(full.weights[k], resumed.weights[k]), k


@pytest.mark.slow  # three trainings with a pool of negatives (fonts, Fashion-MNIST): > 10 s on a quiet machine
def test_negatives_are_deterministic_and_resume_bit_identically(tmp_path, mnist_dir, uninterrupted):
    """Outlier exposure: negatives drawn by (seed, epoch, step) from a pool built once per process, so a
    stopped run resumes to the very same weights; they change the training; max-softmax is calibrated."""
    settings = dict(RESUMABLE, negatives=0.5, data_dir=str(mnist_dir))
    full = train(**settings, out=str(tmp_path / "full.safetensors"))
    out = tmp_path / "run.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train(**settings, out=str(out), stop_after_steps=13)
    resumed = train(resume=str(info.value.checkpoint), quiet=True)
    for k in full.weights:
        assert np.array_equal(full.weights[k], resumed.weights[k]), k
    assert resumed.metadata["history"]["loss"] == full.metadata["history"]["loss"]
    assert resumed.metadata["calibration"] == full.metadata["calibration"]
    assert not np.array_equal(full.weights["dense.weight"], uninterrupted.weights["dense.weight"])
    assert full.metadata["training"]["negatives"] == 0.5
    cal = full.metadata["calibration"]
    assert cal["method"] == "msp"
    assert cal["source"].startswith("the last 640 training digits (trained on; no validation split)")
    assert full.metadata["test_metrics"]["accuracy"] > 0.3  # it still learns digits (chance: 0.1)


def test_negative_pool_is_bounded_by_the_draws():
    cfg = RECIPES["fast"]
    assert training.negative_pool_size(replace(cfg, negatives=0.5), 422) == training.NEGATIVE_POOL
    assert training.negative_pool_size(replace(cfg, negatives=0.5, epochs=1, batch_size=64), 10) == 320


def _wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """Read proc's stdout until a line starts with prefix; the lines read. Fails after timeout seconds."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line starting {prefix!r} within {timeout} s; got {seen}")
        if line is None:
            pytest.fail(f"the process ended before a line starting {prefix!r}; got {seen}")
        seen.append(line)
        if line.startswith(prefix):
            return seen


@pytest.mark.slow  # two processes each, torch imported twice: > 5 s even on a quiet machine
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_resumes(tmp_path, mnist_dir, sig):
    """The signal goes as soon as the trainer says it starts epoch 1 (an event, not a fixed delay)."""
    out = tmp_path / "sig.safetensors"
    cmd = [sys.executable, "-m", "digitlab", "train", "--epochs", "2", "--limit", "6000", "--out", str(out),
           "--data-dir", str(mnist_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(proc, "Epoch 1/2", timeout=120)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "checkpoint saved to" in stderr and "Traceback" not in stderr
    assert checkpoint_path(out).exists() and not out.exists()
    done = subprocess.run([sys.executable, "-m", "digitlab", "train", "--resume", str(checkpoint_path(out))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Resuming from" in done.stdout and out.exists()
    assert len(digitlab.load(out).metadata["history"]["loss"]) == 2


@pytest.fixture
def sigterm_guard():
    """SIGTERM outside the trainer's own handler fails the test instead of killing pytest."""
    def outside(signum, frame):
        raise AssertionError("SIGTERM arrived while the trainer was not handling it")

    old = signal.signal(signal.SIGTERM, outside)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.mark.slow  # two short trainings (~1.5 s): the fast lane keeps under a minute
def test_sigterm_during_the_test_evaluation(tmp_path, mnist_dir, monkeypatch, sigterm_guard):
    """The model is saved before the test evaluation; a stop during it ends the run with a message, and
    the resumed run only evaluates (no epoch redone), to the same weights."""
    real = training.evaluate_torch

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as if sent now, during the evaluation
        return real(*args, **kwargs)

    out = tmp_path / "m.safetensors"
    monkeypatch.setattr(training, "evaluate_torch", signalled)
    with pytest.raises(TrainingInterrupted, match="stopped during the test evaluation; the model is saved"):
        train(**QUICK, out=str(out), data_dir=str(mnist_dir))
    monkeypatch.undo()
    saved = digitlab.load(out)
    assert "test_metrics" not in saved.metadata and len(saved.metadata["history"]["loss"]) == 2
    ckpt = read_checkpoint(checkpoint_path(out))
    assert (ckpt.epoch, ckpt.step) == (2, 0)
    done = train(resume=str(checkpoint_path(out)), quiet=True, stop_after_steps=0)  # 0: no step may run
    assert done.metadata["test_metrics"]["accuracy"] > 0.3  # it learnt (chance: 0.1)
    for k in saved.weights:
        assert np.array_equal(saved.weights[k], done.weights[k]), k
    assert not checkpoint_path(out).exists()


def test_existing_model_is_never_replaced_silently(tmp_path, mnist_dir):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"a 5-epoch model")
    # Refused before anything else: the data folder does not even exist.
    with pytest.raises(DigitlabError, match=r"m.safetensors exists; pass --overwrite"):
        train(epochs=1, out=str(out), data_dir=str(tmp_path / "nowhere"), quiet=True)
    assert out.read_bytes() == b"a 5-epoch model"
    train(epochs=1, limit=256, test_limit=100, out=str(out), data_dir=str(mnist_dir), quiet=True, overwrite=True)
    assert digitlab.load(out).metadata["training"]["epochs"] == 1


def test_an_interrupted_run_is_not_overwritten_by_a_fresh_one(tmp_path, mnist_dir):
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingInterrupted):
        train(**QUICK, out=str(out), data_dir=str(mnist_dir), stop_after_steps=1)
    before = checkpoint_path(out).read_bytes()
    with pytest.raises(DigitlabError, match=r"m.ckpt.safetensors holds an interrupted run; continue it with --resume"):
        train(**QUICK, out=str(out), data_dir=str(mnist_dir))
    assert checkpoint_path(out).read_bytes() == before


def _edit_checkpoint_config(path: Path, **changes) -> None:
    """Rewrite settings in a checkpoint's metadata, as a hand (or a moved copy) could, keeping its tensors."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = json.loads(header["__metadata__"]["digitlab_checkpoint"])
    meta["config"].update(changes)
    header["__metadata__"]["digitlab_checkpoint"] = json.dumps(meta)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def test_a_checkpoint_cannot_name_a_file_to_replace(tmp_path, mnist_dir):
    """A resumed run replaces only the output its checkpoint sits beside, whatever `out` the checkpoint
    records: one that names another existing file needs --overwrite, and that file is left as it was."""
    out = tmp_path / "m.safetensors"
    with pytest.raises(TrainingInterrupted):
        train(**QUICK, out=str(out), data_dir=str(mnist_dir), stop_after_steps=1)
    victim = tmp_path / "notes.txt"
    victim.write_text("precious")
    _edit_checkpoint_config(checkpoint_path(out), out=str(victim))
    with pytest.raises(DigitlabError, match=r"notes.txt exists; pass --overwrite"):
        train(resume=str(checkpoint_path(out)), quiet=True)
    assert victim.read_text() == "precious"


def test_output_a_folder_is_refused_before_training(tmp_path):
    with pytest.raises(DigitlabError, match=r"is a folder; name the model file to write"):
        train(out=str(tmp_path), data_dir=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("target", ["model.safetensors", "nowhere/x.safetensors", "/dev/null"])
def test_output_a_link_or_device_is_refused_before_training(tmp_path, target):
    """The save refuses to write through a link or onto a device: so does the check before training
    (it used to pass, and the run failed only after its last epoch)."""
    out = tmp_path / "m.safetensors"
    if target.startswith("/"):
        out = Path(target)
    else:
        (tmp_path / "model.safetensors").write_bytes(b"a model")
        out.symlink_to(target)
    with pytest.raises(DigitlabError, match=r"out: .* is (a symbolic link|not a regular file); name a plain file"):
        train(out=str(out), overwrite=True, data_dir=str(tmp_path / "nowhere"))
    assert target.startswith("/") or (tmp_path / "model.safetensors").read_bytes() == b"a model"


@pytest.fixture
def unwritable_folder(tmp_path) -> Path:
    """A folder no file can be created in: read-only by mode, or for root (whom modes do not stop) /sys."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        return folder
    try:
        (Path("/sys") / ".digitlab-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("running as root with a writable /sys: no unwritable folder to try")


def test_unwritable_output_is_refused_before_training(tmp_path, unwritable_folder):
    with pytest.raises(DigitlabError, match=r"out: cannot write into"):
        train(out=str(unwritable_folder / "m.safetensors"), data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("")
    with pytest.raises(DigitlabError, match=r"out: cannot write into .*file"):
        train(out=str(tmp_path / "file" / "m.safetensors"), data_dir=str(tmp_path / "nowhere"))


@pytest.mark.slow  # two short trainings (~1.5 s): the fast lane keeps under a minute
def test_a_failed_save_keeps_the_checkpoint(tmp_path, mnist_dir, monkeypatch):
    def disk_full(path, *args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    out = tmp_path / "m.safetensors"
    monkeypatch.setattr(training, "save", disk_full)
    with pytest.raises(DigitlabError, match=r"could not write .*No space left.*kept in the checkpoint .*m.ckpt"):
        train(**QUICK, out=str(out), data_dir=str(mnist_dir))
    monkeypatch.undo()
    assert checkpoint_path(out).exists() and not out.exists()
    done = train(resume=str(checkpoint_path(out)), quiet=True, stop_after_steps=0)
    assert out.exists() and len(done.metadata["history"]["loss"]) == 2


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(DigitlabError, match="epochs: must be >= 1"):
        train(epochs=0)
    with pytest.raises(DigitlabError, match="optimizer: expected one of rmsprop, adam, sgd"):
        train(optimizer="lbfgs")
    with pytest.raises(DigitlabError, match="unknown training settings: colour"):
        train(RECIPES["seed"], colour="red")
    with pytest.raises(DigitlabError, match="resume: no such checkpoint"):
        train(resume="/nonexistent.ckpt.safetensors", out=str(tmp_path / "m.safetensors"))


def test_device_choice_without_a_gpu(tmp_path, mnist_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    assert training._pick_device("auto", 0).type == "cpu"
    with pytest.raises(DigitlabError, match="device: cuda requested, but PyTorch sees no CUDA GPU"):
        train(device="cuda", data_dir=str(mnist_dir), out=str(tmp_path / "m.safetensors"), **QUICK)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow  # three trainings, one in bf16 (emulated, slow, where the CPU lacks it)
def test_precision_is_said_recorded_and_used(tmp_path, mnist_dir, capsys):
    settings = dict(epochs=1, limit=320, test_limit=500, data_dir=str(mnist_dir), seed=1)  # 5 steps
    auto = train(**settings, out=str(tmp_path / "auto.safetensors"))
    expected = "bf16" if native_bf16(cpu_info()) else "fp32"
    assert auto.metadata["training"]["precision"] == expected
    assert f"Training on cpu in {expected} (auto: " in capsys.readouterr().out
    fp32 = train(**settings, out=str(tmp_path / "fp32.safetensors"), precision="fp32", quiet=True)
    bf16 = train(**settings, out=str(tmp_path / "bf16.safetensors"), precision="bf16", quiet=True)
    assert (fp32.metadata["training"]["precision"], bf16.metadata["training"]["precision"]) == ("fp32", "bf16")
    # bf16 autocast really changes the arithmetic (emulated where the CPU lacks it), and still learns.
    assert not np.array_equal(fp32.weights["dense.weight"], bf16.weights["dense.weight"])
    assert bf16.metadata["test_metrics"]["accuracy"] > 0.2  # 10 steps: above chance (0.1)
    assert capsys.readouterr().out == ""  # quiet
