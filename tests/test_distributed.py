"""Data-parallel training: 2 processes on CPU (gloo) over loopback, launched by torchrun."""

from __future__ import annotations

import os

import numpy as np
import pytest

import digitlab
from tests.conftest import run_cli


@pytest.mark.slow  # three processes training 6,000 images each
def test_two_processes_match_one(tmp_path, mnist_dir):
    common = ["--epochs", "1", "--limit", "6000", "--batch-size", "64", "--seed", "5", "--data-dir", mnist_dir,
              "--threads", "1"]
    one = tmp_path / "one.safetensors"
    two = tmp_path / "two.safetensors"
    run_cli("train", *common, "--out", one, check=True)
    proc = run_cli("train", *common, "--nproc", "2", "--out", two, check=True)
    assert proc.stdout.count("Epoch 1/1") == 1  # only rank 0 prints
    a, b = digitlab.load(one), digitlab.load(two)
    assert b.metadata["training"]["world_size"] == 2 and a.metadata["training"]["world_size"] == 1
    # The same global batch of 64, split 32 + 32: the averaged gradients equal the single-process ones,
    # up to float rounding, so the two runs end close together.
    acc_a, acc_b = a.metadata["test_metrics"]["accuracy"], b.metadata["test_metrics"]["accuracy"]
    assert acc_a > 0.9 and abs(acc_a - acc_b) < 0.01, (acc_a, acc_b)
    diff = max(float(np.abs(a.weights[k] - b.weights[k]).max()) for k in a.weights)
    assert diff < 0.05, diff
    assert not list(tmp_path.glob("*.ckpt.safetensors"))


@pytest.mark.slow  # launches two training processes
def test_nproc_prints_no_torchrun_thread_banner(tmp_path, mnist_dir):
    """torchrun warns about OMP_NUM_THREADS in a multi-line banner when it is unset; --nproc sets it."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = run_cli("train", "--epochs", "1", "--limit", "256", "--data-dir", mnist_dir, "--nproc", "2",
                   "--out", tmp_path / "m.safetensors", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "OMP_NUM_THREADS" not in proc.stdout + proc.stderr
    assert "*****" not in proc.stderr
