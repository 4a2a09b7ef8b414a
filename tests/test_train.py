from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import digitlab
from digitlab.errors import DigitlabError
from digitlab.train import RECIPES, TrainingInterrupted, checkpoint_path, config_from_recipe, history_path, train

QUICK = {"epochs": 2, "limit": 1500, "quiet": True}


def test_end_to_end_one_epoch_full_mnist(trained_model, mnist):
    """The real thing: one epoch on all 60,000 images, then the 10,000 test images."""
    acc = (trained_model.predict(mnist.test_images).argmax(1) == mnist.test_labels).mean()
    assert acc >= 0.98, acc
    assert abs(trained_model.metadata["test_metrics"]["accuracy"] - acc) < 1e-3
    t = trained_model.metadata["training"]
    assert (t["epochs"], t["train_images"], t["arch"]) == (1, 60000, RECIPES["fast"].arch)


def test_same_seed_same_weights(tmp_path, mnist_dir):
    a = train(**QUICK, seed=3, out=str(tmp_path / "a.safetensors"), data_dir=str(mnist_dir))
    b = train(**QUICK, seed=3, out=str(tmp_path / "b.safetensors"), data_dir=str(mnist_dir))
    c = train(**QUICK, seed=4, out=str(tmp_path / "c.safetensors"), data_dir=str(mnist_dir))
    for k in a.weights:
        assert np.array_equal(a.weights[k], b.weights[k]), k
    assert not np.array_equal(a.weights["dense.weight"], c.weights["dense.weight"])


def test_files_written_history_and_val_split(tmp_path, mnist_dir):
    out = tmp_path / "m.safetensors"
    m = train(**QUICK, val_split=0.2, out=str(out), data_dir=str(mnist_dir))
    hist = json.loads(history_path(out).read_text())
    assert set(hist["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert len(hist["history"]["loss"]) == 2 and hist["config"]["val_split"] == 0.2
    assert m.metadata["training"]["train_images"] == 1200
    assert digitlab.load(out).metadata["history"] == hist["history"]
    assert not checkpoint_path(out).exists()  # removed once training completes


@pytest.mark.parametrize("stop_at", [5, 30])  # mid-epoch 1, and mid-epoch 2 (24 steps per epoch)
def test_resume_gives_the_same_result(tmp_path, mnist_dir, stop_at):
    settings = dict(QUICK, seed=7, data_dir=str(mnist_dir), optimizer="adam", augment=True)
    ref = train(**settings, out=str(tmp_path / "ref.safetensors"))
    out = tmp_path / "run.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train(**settings, out=str(out), stop_after_steps=stop_at)
    assert info.value.checkpoint == checkpoint_path(out) and info.value.checkpoint.exists()
    assert not out.exists()  # no half model: only the checkpoint
    resumed = train(resume=str(info.value.checkpoint), quiet=True)
    for k in ref.weights:
        assert np.array_equal(ref.weights[k], resumed.weights[k]), k
    assert resumed.metadata["history"]["loss"] == ref.metadata["history"]["loss"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_and_resumes(tmp_path, mnist_dir, sig):
    out = tmp_path / "sig.safetensors"
    cmd = [sys.executable, "-m", "digitlab", "train", "--epochs", "3", "--limit", "20000", "--out", str(out),
           "--data-dir", str(mnist_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("Epoch 1/3")
    time.sleep(1.5)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved to" in stderr and "Traceback" not in stderr
    assert checkpoint_path(out).exists() and not out.exists()
    done = subprocess.run([sys.executable, "-m", "digitlab", "train", "--resume", str(checkpoint_path(out))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Resuming from" in done.stdout and out.exists()
    assert len(digitlab.load(out).metadata["history"]["loss"]) == 3


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "run.ckpt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(DigitlabError, match="run.ckpt.safetensors: not a digitlab checkpoint"):
        train(resume=str(bad))


def test_bad_settings_are_named():
    with pytest.raises(DigitlabError, match="epochs: must be >= 1"):
        train(epochs=0)
    with pytest.raises(DigitlabError, match="optimizer: expected one of rmsprop, adam, sgd"):
        train(optimizer="lbfgs")
    with pytest.raises(DigitlabError, match="unknown training settings: colour"):
        config_from_recipe("seed", colour="red")
    with pytest.raises(DigitlabError, match="recipe: unknown 'turbo'"):
        config_from_recipe("turbo")
    with pytest.raises(DigitlabError, match="resume: no such checkpoint"):
        train(resume="/nonexistent.ckpt.safetensors")


def test_elastic_distortion_is_smooth_seeded_and_checked(mnist):
    import torch

    from digitlab.train import augment_batch

    x = torch.from_numpy(mnist.train_images[:64]).float().div(255).unsqueeze(1)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    affine, elastic = augment_batch(x, g()), augment_batch(x, g(), elastic=34)
    assert torch.equal(elastic, augment_batch(x, g(), elastic=34))  # a function of the seed
    assert elastic.shape == x.shape and 0 <= elastic.min() and elastic.max() <= 1
    change = (elastic - affine).abs().mean() / affine.mean()
    assert 0.1 < change < 1.5, change  # visibly different digits, not noise or blank images
    # A smooth warp moves ink (thinning some strokes, thickening others), it does not make or destroy
    # it: over the batch the total stays within 5%, and no digit loses most of its ink.
    assert abs(elastic.sum() / affine.sum() - 1) < 0.05
    assert (elastic.sum((1, 2, 3)) / affine.sum((1, 2, 3))).min() > 0.4
    with pytest.raises(DigitlabError, match="elastic: needs augment"):
        train(elastic=20)
    with pytest.raises(DigitlabError, match=r"elastic: must be in \[0, 100\] pixels, got -1"):
        train(augment=True, elastic=-1)


def test_recipes_are_plain_data():
    seed = config_from_recipe("seed")
    assert (seed.epochs, seed.batch_size, seed.lr, seed.optimizer, seed.arch) == (5, 64, 1e-3, "rmsprop", "tutorial")
    best = config_from_recipe("best", epochs=2)
    assert best.augment and best.epochs == 2 and best.arch == "lean-bn"


def test_device_choice_without_a_gpu(tmp_path, mnist_dir):
    import torch

    from digitlab.train import _pick_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto picks it")
    assert _pick_device("auto", 0).type == "cpu"
    with pytest.raises(DigitlabError, match="device: cuda requested, but PyTorch sees no CUDA GPU"):
        train(device="cuda", data_dir=str(mnist_dir), out=str(tmp_path / "m.safetensors"), **QUICK)
    assert not (tmp_path / "m.safetensors").exists()
