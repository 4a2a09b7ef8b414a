"""The piece verifier (digitlab.pieces): labels from the owner map, the file it is stored in, finding it."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.errors import ModelFileError
from digitlab.pieces import PIECE_CLASSES, _chained, companion_path, find_verifier, label_piece, load_verifier
from digitlab.synth import number_picture, number_picture_owners


@pytest.mark.parametrize(("weights", "label"), [
    ([100, 0, 0], 0),  # all of digit 0's ink: whole
    ([95, 5, 0], 0),  # a little of its neighbour (touching ink) is still whole
    ([40, 0, 0], 10),  # under PART of one digit: part
    ([100, 60, 0], 11),  # most of one and much of another: more
    ([0, 50, 50], 11),  # two halves: more
    ([70, 0, 0], None),  # between part and whole: left out of training
    ([0, 0, 0], None),  # no ink
])
def test_label_piece(weights, label):
    assert label_piece(np.array(weights, float), np.array([100.0, 100.0, 100.0])) == label


def test_chained():
    assert _chained({(0, 2), (2, 3)}, 4)
    assert not _chained({(0, 1), (2, 3)}, 4)


def test_owner_map_is_the_same_picture_and_covers_each_digit(mnist):
    digits = mnist.train_images[:4]
    plain, boxes = number_picture(digits, np.random.default_rng(5), "touching")
    picture, boxes2, owner = number_picture_owners(digits, np.random.default_rng(5), "touching")
    assert np.array_equal(plain, picture) and boxes == boxes2  # the benchmark's pictures are unchanged
    assert owner.shape == picture.shape and set(np.unique(owner)) == {-1, 0, 1, 2, 3}
    assert picture[owner >= 0].mean() < picture[owner < 0].mean() - 0.3  # owned pixels are the dark ink


def test_companion_path_and_finding(tmp_path, tiny_model_path):
    assert companion_path(tmp_path / "m.safetensors") == tmp_path / "m.pieces.safetensors"
    assert find_verifier(tmp_path / "m.safetensors") is None  # no companion: reading as before
    with pytest.raises(ModelFileError, match="not a piece verifier"):
        load_verifier(tiny_model_path)  # a digit model (10 classes) is not a verifier
    with pytest.raises(ModelFileError, match="no such model file"):
        find_verifier(tmp_path / "m.safetensors", tmp_path / "missing.safetensors")


@pytest.mark.slow  # trains a verifier (~1 min on 2 cores)
def test_trained_verifier_file(piece_verifier_path):
    verifier = load_verifier(piece_verifier_path)
    assert verifier.classes == PIECE_CLASSES
    training = verifier.metadata["training"]
    assert training["train_digits"] == [0, 50_000] and training["held_out_accuracy"] > 0.8


@pytest.mark.slow  # a CLI subprocess
def test_cli_read_refuses_a_digit_model_as_verifier(tiny_model_path, tmp_path):
    from tests.conftest import run_cli

    page = tmp_path / "n.png"
    page.write_bytes(bytes.fromhex("89504e470d0a1a0a"))  # refused before any picture is read
    proc = run_cli("read", tiny_model_path, page, "--pieces", tiny_model_path)
    assert proc.returncode == 2 and "not a piece verifier" in proc.stderr


@pytest.mark.parametrize("args", [["--strings", "0"], ["--epochs", "-1"], []])
def test_training_command_refuses_before_training(tmp_path, args, capsys):
    """`python -m digitlab.pieces OUT` once replaced an existing OUT without asking, and answered bad
    counts with tracebacks after minutes of work: each is now one line, exit 2, before any training."""
    from digitlab.pieces import main

    out = tmp_path / "v.pieces.safetensors"
    out.write_bytes(b"the user's file")
    with pytest.raises(SystemExit) as info:
        main([str(out), *args])
    assert info.value.code == 2 and out.read_bytes() == b"the user's file"
    assert "error: " in capsys.readouterr().err.splitlines()[-1]


def test_a_verifier_is_no_digit_model(tmp_path, tiny_model_path):
    """A piece verifier given as MODEL answered "part" and "more" as digits (text "2more26"): refused
    where a digit model is loaded to read (the CLI, the server) with a line naming the file."""
    from digitlab import modelfile
    from digitlab.model import ArchConfig, build_torch
    from digitlab.pieces import digit_model
    from digitlab.serve.app import create_app

    cfg = ArchConfig(classes=len(PIECE_CLASSES))
    weights = {k: v.detach().numpy() for k, v in build_torch(cfg).state_dict().items()}
    verifier = modelfile.save(tmp_path / "v.safetensors", weights, {
        "architecture": "tutorial", "arch_config": cfg.to_dict(), "dataset": "mnist", "classes": PIECE_CLASSES})
    assert digit_model(tiny_model_path).classes == [str(k) for k in range(10)]
    for make in (digit_model, create_app):
        with pytest.raises(ModelFileError, match="a piece verifier, not a digit model"):
            make(verifier)
