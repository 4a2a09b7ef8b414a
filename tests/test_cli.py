"""The command line, through real subprocesses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digitlab.config import RECIPES, cli_fields
from tests.conftest import run_cli


def test_summary():
    out = run_cli("summary", check=True).stdout
    assert "conv2d_2 (Conv2D)" in out and "Total params: 93,322" in out and "Non-trainable params: 0" in out


def test_recipes():
    out = run_cli("recipes", check=True).stdout
    assert out.splitlines()[0].startswith(" seed: arch=tutorial, epochs=5, batch_size=64, optimizer=rmsprop")


def test_train_cli_small(tmp_path, mnist_dir):
    out = tmp_path / "cli.safetensors"
    proc = run_cli("train", "--epochs", "1", "--limit", "1000", "--val-split", "0.1", "--optimizer", "adam",
                   "--test-limit", "500", "--out", out, "--data-dir", mnist_dir, check=True)
    assert "Epoch 1/1" in proc.stdout and "val_accuracy:" in proc.stdout
    assert "test_accuracy:" in proc.stdout and "(on the first 500 test images)" in proc.stdout
    assert json.loads(out.with_name("cli.history.json").read_text())["test"]["images"] == 500
    assert out.exists() and out.with_name("cli.history.json").exists()


@pytest.mark.slow  # a second CLI training in a subprocess (torch imported): ~4 s
def test_train_flags_override_the_recipe_both_ways(tmp_path, mnist_dir):
    out = tmp_path / "b.safetensors"
    run_cli("train", "--recipe", "best", "--no-augment", "--epochs", "1", "--negatives", "0", "--limit", "256",
            "--test-limit", "100", "--quiet", "--out", out, "--data-dir", mnist_dir, check=True)
    config = json.loads(out.with_name("b.history.json").read_text())["config"]
    assert (config["recipe"], config["augment"], config["epochs"], config["negatives"]) == ("best", False, 1, 0)
    assert config["arch"] == RECIPES["best"].arch


def test_train_bad_option_is_a_clear_error(tmp_path):
    proc = run_cli("train", "--epochs", "0", "--out", tmp_path / "x.safetensors")
    assert proc.returncode == 2 and "epochs: must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


def test_train_options_are_the_config_fields():
    text = run_cli("train", "--help", check=True).stdout
    for f in cli_fields():
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--stop-after-steps" not in text and "{auto,fp32,bf16}" in text and "--no-augment" in text


def test_abbreviated_options_are_refused(tmp_path):
    """`--epoch 1` once passed for `--epochs 1` and replaced a 5-epoch model."""
    proc = run_cli("train", "--epoch", "1", "--out", tmp_path / "m.safetensors")
    assert proc.returncode == 2 and "unrecognized arguments: --epoch" in proc.stderr
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow  # CLI twin of test_training.py::test_existing_model_is_never_replaced_silently
def test_train_never_replaces_a_model_silently(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"a 5-epoch model")
    proc = run_cli("train", "--epochs", "1", "--out", out, "--data-dir", tmp_path / "nowhere")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{out} exists; pass --overwrite to replace it" in proc.stderr
    assert out.read_bytes() == b"a 5-epoch model"


@pytest.mark.slow  # CLI twin of the test_training.py output checks (torch imported in a subprocess)
def test_train_output_checked_before_training(tmp_path):
    proc = run_cli("train", "--out", tmp_path, "--data-dir", tmp_path / "nowhere")
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_files_index_and_json(tmp_path, trained_model_path):
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(100, 25), (100, 175)], fill=0, width=16)
    im.save(tmp_path / "one.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    proc = run_cli("predict", trained_model_path, tmp_path / "one.png", tmp_path / "broken.png",
                   "--index", "0", "--json")
    assert proc.returncode == 1  # one file failed...
    assert "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    records = json.loads(proc.stdout)  # ...the others were still predicted, and every input has its record
    assert [r["source"] for r in records] == [str(tmp_path / "one.png"), str(tmp_path / "broken.png"),
                                              "test[0] (label 7)"]
    failed = records.pop(1)
    assert set(failed) == {"source", "error"} and failed["error"].startswith(f"{tmp_path / 'broken.png'}: ")
    assert "\n" not in failed["error"] and failed["error"] in proc.stderr
    assert [r["digit"] for r in records] == [1, 7]
    for r in records:
        assert set(r) >= {"source", "digit", "confidence", "probabilities"}
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
    text = run_cli("predict", trained_model_path, tmp_path / "one.png", check=True).stdout
    assert "one.png: 1" in text


@pytest.mark.parametrize("command", ["predict", pytest.param("read", marks=pytest.mark.slow),
                                     pytest.param("explain", marks=pytest.mark.slow)])  # one CLI door in the fast lane
def test_json_has_a_record_for_every_input(command, tmp_path, tiny_model_path):
    """A file that cannot be read, a missing one and an out-of-range --index each get {"source", "error"}
    in their place in the JSON list (exit 1); the readable image is still answered."""
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(100, 25), (100, 175)], fill=0, width=16)
    im.save(tmp_path / "one.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    names = [tmp_path / "broken.png", tmp_path / "one.png", tmp_path / "none.png"]
    proc = run_cli(command, tiny_model_path, *names, "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    records = json.loads(proc.stdout)
    assert [r["source"] for r in records] == [str(n) for n in names]
    assert [sorted(r) for r in (records[0], records[2])] == [["error", "source"]] * 2
    assert records[2]["error"] == f"{names[2]}: no such file"
    assert "error" not in records[1] and ("digit" in records[1] or "text" in records[1])
    errors = proc.stderr.splitlines()
    assert errors == [f"digitlab: error: {records[0]['error']}", f"digitlab: error: {records[2]['error']}"]
    text = run_cli(command, tiny_model_path, *names)  # the text output: the same errors on stderr, exit 1
    assert text.returncode == 1 and text.stderr.splitlines() == errors and "one.png" in text.stdout


def test_predict_directory(tmp_path, trained_model_path, mnist):
    for i in range(3):
        Image.fromarray(255 - mnist.test_images[i]).resize((140, 140)).save(tmp_path / f"d{i}.jpg")
    (tmp_path / "readme.txt").write_text("not an image, and skipped: not an image suffix")
    records = json.loads(run_cli("predict", trained_model_path, tmp_path, "--json", check=True).stdout)
    assert [r["digit"] for r in records] == list(mnist.test_labels[:3])


def test_evaluate_json_and_plots(tmp_path, trained_model_path):
    proc = run_cli("evaluate", trained_model_path, "--json", "--plots", tmp_path / "plots", check=True)
    result = json.loads(proc.stdout)
    assert 0.98 <= result["accuracy"] <= 1 and result["loss"] > 0
    assert len(result["per_class"]) == 10 and {"precision", "recall", "f1"} <= set(result["per_class"][3])
    conf = result["confusion"]
    assert len(conf) == 10 and sum(map(sum, conf)) == 10000
    assert abs(sum(conf[k][k] for k in range(10)) / 10000 - result["accuracy"]) < 1e-9
    for name in ("confusion.png", "misclassified.png"):
        assert Image.open(tmp_path / "plots" / name).size[0] > 300
    text = run_cli("evaluate", trained_model_path, check=True).stdout
    assert "accuracy:" in text and "confusion matrix" in text


def test_evaluate_own_labelled_folder(tmp_path, trained_model_path, trained_model, mnist):
    """DIR/<digit>/*.png: people's own labelled digits, read the way predict reads them; the figures are
    those of the same pictures given as arrays."""
    from digitlab.evaluate import evaluate
    from digitlab.images import decode
    from digitlab.prepare import prepare

    own = tmp_path / "own"
    for i in range(300):
        label = int(mnist.test_labels[i])
        (own / str(label)).mkdir(parents=True, exist_ok=True)
        # dark ink on light paper at 5x the size, as a scan would be: preprocessing has real work to do
        picture = Image.fromarray(255 - mnist.test_images[i]).resize((140, 140), Image.BICUBIC)
        picture.save(own / str(label) / f"{i}.png")
    files = sorted(own.glob("*/*.png"))
    arrays = np.stack([prepare(decode(f)).image for f in files])
    expected, _ = evaluate(trained_model, arrays, np.asarray([int(f.parent.name) for f in files]))
    result = json.loads(run_cli("evaluate", trained_model_path, "--images", own, "--json", "--plots",
                                tmp_path / "plots", check=True).stdout)
    assert result["count"] == 300 and result["images"] == str(own)
    assert result["accuracy"] == expected["accuracy"] > 0.9 and result["confusion"] == expected["confusion"]
    assert (tmp_path / "plots" / "misclassified.png").is_file()
    assert "images in" in run_cli("evaluate", trained_model_path, "--images", own, check=True).stdout

    (own / "ten").mkdir()
    bad = run_cli("evaluate", trained_model_path, "--images", own)
    assert bad.returncode == 2 and "ten name no class" in bad.stderr and "Traceback" not in bad.stderr
    (own / "ten").rmdir()
    (own / "3" / "broken.png").write_bytes(b"not a png")
    bad = run_cli("evaluate", trained_model_path, "--images", own)
    assert bad.returncode == 2 and "broken.png" in bad.stderr
    empty = tmp_path / "empty"
    (empty / "0").mkdir(parents=True)
    bad = run_cli("evaluate", trained_model_path, "--images", empty)
    assert bad.returncode == 2 and "no images found" in bad.stderr


def test_ensemble(trained_model_path, tiny_model_path):
    result = json.loads(run_cli("evaluate", trained_model_path, tiny_model_path, "--json", check=True).stdout)
    assert result["models"] == 2 and result["accuracy"] > 0.9


@pytest.mark.slow  # a subprocess reading all of MNIST: ~3 s
def test_show(tmp_path):
    term = run_cli("show", "--index", "0", check=True).stdout
    assert "█" in term and "label 7" in term
    run_cli("show", "--index", "0", "--out", tmp_path / "seven.png", check=True)
    assert Image.open(tmp_path / "seven.png").format == "PNG"
    bad = run_cli("show", "--index", "10000")
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_bad_model_file_no_traceback(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x00" * 40)
    proc = run_cli("evaluate", p)
    assert proc.returncode == 2 and "bad.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_is_explained(tmp_path, tiny_model_path):
    proc = run_cli("evaluate", tiny_model_path, "--data-dir", tmp_path)
    assert proc.returncode == 2 and "lacks" in proc.stderr and "Traceback" not in proc.stderr


def test_typo_shows_the_subcommands_usage_and_the_closest_option():
    proc = run_cli("train", "--epochz", "1")
    assert proc.returncode == 2
    assert "usage: digitlab train" in proc.stderr and "did you mean --epochs?" in proc.stderr


def test_torchrun_env_sets_threads_only_when_unset():
    from digitlab.cli import torchrun_env

    assert torchrun_env(2, 3, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_NUM_THREADS": "3"}
    assert int(torchrun_env(2, None, {})["OMP_NUM_THREADS"]) >= 1
    assert torchrun_env(2, None, {"OMP_NUM_THREADS": "5"})["OMP_NUM_THREADS"] == "5"  # the user's choice stays
