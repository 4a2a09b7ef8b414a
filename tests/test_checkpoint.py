"""Checkpoints: a round trip, and every field checked on read (a clear error naming the file and the field)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from digitlab.checkpoint import META_KEY, CheckpointError, checkpoint_path, read_checkpoint
from digitlab.errors import DigitlabError
from digitlab.training import TrainingInterrupted, train
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory, mnist_dir) -> Path:
    """A real checkpoint: Adam (scalar and tensor state), stopped at step 5 of epoch 1 (10 steps an epoch)."""
    out = tmp_path_factory.mktemp("ckpt") / "run.safetensors"
    with pytest.raises(TrainingInterrupted):
        train(epochs=2, limit=640, test_limit=100, optimizer="adam", out=str(out), data_dir=str(mnist_dir), quiet=True,
              stop_after_steps=5)
    return checkpoint_path(out)


def parts(path: Path) -> tuple[dict, dict]:
    data = path.read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    return json.loads(header["__metadata__"][META_KEY]), load_file(path)


def rewrite(src: Path, dst: Path, meta_change=None, tensors_change=None) -> Path:
    """A copy of a checkpoint with its JSON document and/or tensors changed."""
    meta, tensors = parts(src)
    if meta_change:
        meta_change(meta)
    if tensors_change:
        tensors_change(tensors)
    dst.write_bytes(st_save(tensors, metadata={META_KEY: json.dumps(meta)}))
    return dst


def test_round_trip(ckpt_file):
    c = read_checkpoint(ckpt_file)
    assert (c.epoch, c.step, c.steps_per_epoch) == (0, 5, 10)
    assert c.config.optimizer == "adam" and c.config.stop_after_steps == 5
    assert c.partial[2] == 5 * 64 and 0 <= c.partial[1] <= c.partial[2]
    assert c.history == {} and c.rng.dtype == torch.uint8
    assert c.optimizer["state"][0]["step"].shape == () and c.optimizer["state"][0]["step"].item() == 5
    assert set(c.model) == {"conv2d.weight", "conv2d.bias", "conv2d_1.weight", "conv2d_1.bias", "conv2d_2.weight",
                            "conv2d_2.bias", "dense.weight", "dense.bias", "dense_1.weight", "dense_1.bias"}


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _set_config(key, value):
    return lambda meta: meta["config"].__setitem__(key, value)


@pytest.mark.parametrize("change, message", [
    (_set("epoch", 99), "epoch: expected a whole number in 0..2, got 99"),
    (_set("step", -5), "step: expected a whole number in 0..9, got -5"),
    (_set("step", 10), "step: expected a whole number in 0..9, got 10"),
    (_set("epoch", "1"), "epoch: expected a whole number in 0..2, got '1'"),
    (_set("step", 2.0), "step: expected a whole number in 0..9, got 2.0"),
    (_set("epoch", None), "epoch: expected a whole number"),
    (_set("steps_per_epoch", 0), "steps_per_epoch: expected a whole number in 1.."),
    (_set("config", "seed"), "config: expected an object of training settings, got 'seed'"),
    (_set_config("epochs", "2"), "config: epochs: expected a whole number, got '2'"),
    (_set_config("epochs", 0), "config: epochs: must be >= 1"),
    (_set_config("arch", "huge"), "config: arch: expected one of"),
    (_set_config("warp", 9), "config: unknown training settings: warp"),
    (_set("history", []), "history: expected an object of per-epoch lists"),
    (_set("history", {"loss": [0.5]}), r"history.loss: expected 0 numbers \(one per epoch done\)"),
    (_set("partial", [0.0, 1]), r"partial: expected \[loss sum, correct, seen\]"),
    (_set("partial", [1.0, 400, 320]), r"partial.correct: expected a whole number in 0..320, got 400"),
    (_set("partial", [1.0, 0, 10**6]), r"partial.seen: expected a whole number in 0..320"),
    (_set("partial", [-1.0, 0, 0]), r"partial.loss: expected a number >= 0"),
    (_set("param_groups", {}), "param_groups: expected 1 optimizer group"),
    (lambda m: m["param_groups"][0].__setitem__("betas", [0.5, 0.5]), r"param_groups.betas: expected \[0.9"),
    (lambda m: m["param_groups"][0].__setitem__("lr", "x"), "param_groups.lr: expected a positive number"),
    (lambda m: m["param_groups"][0].__setitem__("params", [0, 1]), "param_groups.params: expected"),
    (_set("kind", "something-else"), "not a digitlab checkpoint"),
])
def test_every_field_is_checked(ckpt_file, tmp_path, change, message):
    bad = rewrite(ckpt_file, tmp_path / "bad.ckpt.safetensors", meta_change=change)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(bad)
    assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.pop("rng"), r"tensors: do not match .*missing \['rng'\]"),
    (lambda t: t.pop("optim/3/exp_avg"), r"missing \['optim/3/exp_avg'\]"),
    (lambda t: t.__setitem__("model/extra", torch.zeros(2)), r"unexpected \['model/extra'\]"),
    (lambda t: t.__setitem__("model/dense.bias", torch.zeros(11)),
     r"tensor model/dense.bias: expected F32 of shape \[64\]"),
    (lambda t: t.__setitem__("model/dense.bias", torch.zeros(64, dtype=torch.int32)), r"expected F32 .*'I32'"),
    (lambda t: t.__setitem__("optim/0/step", torch.zeros(1, dtype=torch.float64)), r"optim/0/step: expected F32"),
])
def test_every_tensor_is_checked(ckpt_file, tmp_path, change, message):
    bad = rewrite(ckpt_file, tmp_path / "bad.ckpt.safetensors", tensors_change=change)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(bad)


def test_broken_files(ckpt_file, tmp_path):
    data = ckpt_file.read_bytes()
    cases = {
        "truncated": data[:-100],
        "header too long": struct.pack("<Q", 1 << 40) + data[8:],
        "not json": data[:8] + b"x" * (len(data) - 8),
        "empty": b"",
        "trailing bytes": data + b"\0" * 64,
        "not safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}",
    }
    for name, content in cases.items():
        bad = tmp_path / "run.ckpt.safetensors"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=r"run.ckpt.safetensors: not a digitlab checkpoint") as info:
            read_checkpoint(bad)
        assert len(str(info.value)) < 300, name


def test_steps_per_epoch_must_fit_the_data(ckpt_file, tmp_path):
    """A checkpoint claiming another epoch length than its run's data gives is refused when resuming."""
    bad = rewrite(ckpt_file, tmp_path / "bad.ckpt.safetensors", meta_change=_set("steps_per_epoch", 1000))
    read_checkpoint(bad)  # consistent in itself...
    with pytest.raises(DigitlabError, match=r"steps_per_epoch: 1000, but the data gives 10"):
        train(resume=str(bad), out=str(tmp_path / "m.safetensors"))


@pytest.mark.slow  # CLI twin of the in-process lying-checkpoint tests (torch in a subprocess)
def test_cli_resume_from_a_lying_checkpoint_is_one_line(ckpt_file, tmp_path):
    bad = rewrite(ckpt_file, tmp_path / "bad.ckpt.safetensors", meta_change=_set("epoch", 99))
    proc = run_cli("train", "--resume", bad, "--out", tmp_path / "m.safetensors")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"digitlab: error: {bad}: epoch: expected a whole number in 0..2, got 99"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10**6), value=st.integers(0, 255))
def test_any_changed_header_byte_is_an_error_or_a_valid_load(ckpt_file, tmp_path, position, value):
    data = bytearray(ckpt_file.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    data[position % header_end] = value
    path = tmp_path / "fuzz.ckpt.safetensors"
    path.write_bytes(bytes(data))
    try:
        c = read_checkpoint(path)
    except CheckpointError:
        return
    assert 0 <= c.epoch <= c.config.epochs and 0 <= c.step < c.steps_per_epoch
