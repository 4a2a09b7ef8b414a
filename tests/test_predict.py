"""Prediction records (digitlab.predict): statuses at every door, logits from the same forward pass, torch-free."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import digitlab
from digitlab.modelfile import save
from digitlab.predict import describe, predict_records
from digitlab.prepare import prepare
from tests.conftest import run_cli

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian fonts-dejavu-core
# Calibrations that decide every inked single mark one way, whatever the model: they test the wiring
# (prepare's status, then the stored calibration, then the record), not the model's judgement.
REJECT_ALL = {"method": "msp", "threshold": 1.5, "target_frr": 0.01, "source": "test: above any probability"}
ACCEPT_ALL = {"method": "energy", "threshold": -1e9, "target_frr": 0.01, "source": "test: below any energy"}


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures(mnist) -> dict[str, bytes]:
    """PNG files as a person would send them: dark ink on white paper."""
    digit = Image.fromarray(255 - mnist.test_images[0]).resize((140, 140))
    blank = Image.new("L", (200, 200), 255)
    specks = blank.copy()
    ImageDraw.Draw(specks).rectangle([40, 50, 41, 51], fill=90)  # dust: still empty
    letter = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(letter).text((100, 100), "K", font=ImageFont.truetype(FONT, 120), fill=0, anchor="mm")
    pair = Image.new("L", (320, 160), 255)  # "72": two MNIST digits side by side, apart
    pair.paste(Image.fromarray(255 - mnist.test_images[0]).resize((120, 120)), (20, 20))
    pair.paste(Image.fromarray(255 - mnist.test_images[1]).resize((120, 120)), (180, 20))
    return {name: _png(im) for name, im in
            {"digit": digit, "blank": blank, "specks": specks, "letter": letter, "pair": pair}.items()}


def _with_calibration(src: Path, out: Path, calibration: dict) -> Path:
    model = digitlab.load(src)
    save(out, model.weights, {**model.metadata, "calibration": calibration})
    return out


@pytest.fixture(scope="module")
def models(tiny_model_path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("calibrated")
    return {"reject": _with_calibration(tiny_model_path, folder / "reject.safetensors", REJECT_ALL),
            "accept": _with_calibration(tiny_model_path, folder / "accept.safetensors", ACCEPT_ALL)}


EXPECTED = {  # name -> status under REJECT_ALL, under ACCEPT_ALL
    "digit": ("not_a_digit", "digit"), "letter": ("not_a_digit", "digit"), "blank": ("empty", "empty"),
    "specks": ("empty", "empty"), "pair": ("several_digits", "several_digits"),
}


def _check(records: list[dict], names: list[str], which: int) -> None:
    assert [r["status"] for r in records] == [EXPECTED[n][which] for n in names], names
    for r in records:
        assert (r["digit"] is None) == (r["status"] != "digit"), r
        assert (r["label"] is None) == (r["status"] != "digit"), r
        assert (r["probabilities"] is None) == (r["status"] == "empty"), r
    pair = records[names.index("pair")]
    assert pair["marks"] == 2


def _doors(model_path: Path, pictures: dict[str, bytes], tmp_path: Path) -> dict[str, list[dict]]:
    """The same pictures through the CLI, the Python API, /api/predict and /api/predict/batch."""
    from fastapi.testclient import TestClient

    from digitlab.images import decode
    from digitlab.serve.app import create_app

    names = list(pictures)
    files = []
    for name, data in pictures.items():
        (tmp_path / f"{name}.png").write_bytes(data)
        files.append(tmp_path / f"{name}.png")
    cli = run_cli("predict", model_path, *files, "--json", check=True)
    api = predict_records(digitlab.load(model_path), [prepare(decode(f)) for f in files], names)
    client = TestClient(create_app(model_path), base_url="http://localhost")
    one = [client.post("/api/predict", files={"file": (f"{n}.png", pictures[n], "image/png")}) for n in names]
    batch = client.post("/api/predict/batch", files=[("files", (f"{n}.png", pictures[n], "image/png")) for n in names])
    assert all(r.status_code == 200 for r in [*one, batch])  # answers, not errors
    return {"cli": json.loads(cli.stdout), "python": api, "/api/predict": [r.json() for r in one],
            "/api/predict/batch": batch.json()}


@pytest.mark.parametrize("which, calibrated", [(0, "reject"), (1, "accept")])
def test_statuses_reach_every_door(models, pictures, tmp_path, which, calibrated):
    for door, records in _doors(models[calibrated], pictures, tmp_path).items():
        try:
            _check(records, list(pictures), which)
        except AssertionError as e:
            raise AssertionError(f"{door}: {e}") from None


def test_cli_text_says_the_state_in_words(models, pictures, tmp_path):
    for name in ("blank", "pair", "letter"):
        (tmp_path / f"{name}.png").write_bytes(pictures[name])
    text = run_cli("predict", models["reject"], *(tmp_path / f"{n}.png" for n in ("blank", "pair", "letter")),
                   check=True).stdout
    assert "blank.png: no digit (empty)" in text
    assert "pair.png: several digits (2 marks)" in text
    assert "letter.png: not a digit" in text


def test_energy_calibration_scores_the_logits_of_the_same_pass(models, pictures, forward_calls):
    """An energy calibration gets its logits from the pass that gives the probabilities (DigitModel.forward
    gives both): one forward pass per call, and the score is the energy of those logits (a threshold just
    above a picture's energy rejects it)."""
    from digitlab import trust
    from digitlab.images import decode

    model = digitlab.load(models["accept"])
    prepared = [prepare(decode(io.BytesIO(pictures["digit"])))]
    energy = float(trust.energy_score(model.logits(prepared[0].image[None]))[0])
    calls = forward_calls
    calls.clear()  # the energy above was one pass too
    for threshold, status in ((energy - 1e-3, "digit"), (energy + 1e-3, "not_a_digit")):
        model.metadata["calibration"] = {**ACCEPT_ALL, "threshold": threshold}
        assert predict_records(model, prepared, ["d"])[0]["status"] == status
    assert calls == [1, 1]  # one pass per call
    model.metadata["calibration"] = REJECT_ALL  # msp: the probabilities are enough
    assert describe(predict_records(model, prepared, ["d.png"])[0]).startswith("d.png: not a digit")
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("backend", ["onnxruntime", "numpy"])
def test_logits_are_the_log_probabilities_up_to_a_constant(tiny_model_path, mnist, backend):
    model = digitlab.load(tiny_model_path)
    model.backend = backend
    probs, logits = model.predict(mnist.test_images[:200], logits=True)
    np.testing.assert_array_equal(probs, model.predict(mnist.test_images[:200]))
    m = logits.max(axis=1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.log(probs), log_softmax, atol=1e-4)
    np.testing.assert_array_equal(model.logits(mnist.test_images[:200]), logits)


def test_backends_give_the_same_logits(tiny_model_path, mnist):
    a, b = digitlab.load(tiny_model_path), digitlab.load(tiny_model_path)
    a.backend, b.backend = "onnxruntime", "numpy"
    np.testing.assert_allclose(a.logits(mnist.test_images[:100]), b.logits(mnist.test_images[:100]), atol=1e-4)


def test_exported_onnx_has_probabilities_only(tiny_model_path, tmp_path):
    """The in-process session has a logits output; the exported file keeps its one output."""
    import onnx

    from digitlab.onnx import export_onnx

    out = export_onnx(digitlab.load(tiny_model_path), tmp_path / "m.onnx")
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["probabilities"]


def test_predict_does_not_import_torch(tiny_model_path, pictures, tmp_path):
    """`digitlab predict`, abstention included, runs without torch (an energy calibration needs logits)."""
    model = _with_calibration(tiny_model_path, tmp_path / "energy.safetensors", ACCEPT_ALL)
    (tmp_path / "d.png").write_bytes(pictures["digit"])
    code = ("import sys; from digitlab.cli import main; rc = main(['predict', sys.argv[1], sys.argv[2], '--json']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(tmp_path / "d.png")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["status"] == "digit"


LIBERATION = "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"  # a font training never uses


@pytest.fixture(scope="module")
def oe_model_path(tmp_path_factory, mnist_dir) -> Path:
    """`fast` for one epoch with outlier exposure (negatives 0.5), calibrated on a 10% validation split."""
    out = tmp_path_factory.mktemp("oe") / "oe.safetensors"
    digitlab.train(recipe="fast", epochs=1, negatives=0.5, val_split=0.1, out=str(out), data_dir=str(mnist_dir),
                   quiet=True)
    return out


@pytest.mark.slow  # trains on all 60,000 digits: 1-3 minutes on 2 cores
def test_letters_are_not_digits_at_every_door(oe_model_path, pictures, tmp_path):
    """A model trained with negatives, its own calibration: letters from a font it never saw are answered
    "not a digit" (most of them; here all six, where a `fast` model trained without negatives let 14 of 15
    such glyphs through its energy threshold), the digit is a digit, the blank is empty - the same at every door."""
    font = ImageFont.truetype(LIBERATION, 120)
    pics = {"digit": pictures["digit"], "blank": pictures["blank"]}
    for ch in "KWXMN#":
        im = Image.new("L", (200, 200), 255)
        ImageDraw.Draw(im).text((100, 100), ch, font=font, fill=0, anchor="mm")
        pics[f"glyph{ord(ch)}"] = _png(im)
    doors = _doors(oe_model_path, pics, tmp_path)
    statuses = {door: [r["status"] for r in records] for door, records in doors.items()}
    assert len({tuple(s) for s in statuses.values()}) == 1, statuses  # every door says the same
    first = next(iter(statuses.values()))
    assert first[:2] == ["digit", "empty"], first
    assert first[2:].count("not_a_digit") >= 4, first
    for records in doors.values():
        for r in records[2:]:
            assert (r["digit"] is None) == (r["status"] == "not_a_digit") and r["probabilities"] is not None
