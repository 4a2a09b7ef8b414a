"""The HTTP API in-process (TestClient): every endpoint and every kind of bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from digitlab.config import RECIPES
from digitlab.images import decode
from digitlab.model import ARCHITECTURES, count_params
from digitlab.prepare import prepare
from digitlab.serve.app import create_app
from tests.test_images import bomb_png


@pytest.fixture(scope="module")
def client(trained_model):
    return TestClient(create_app(trained_model, max_upload=256 * 1024))


def png_of_one() -> bytes:
    im = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(im).line([(100, 25), (100, 175)], fill=0, width=16)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_health_and_model(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/model").json()
    arch = RECIPES["fast"].arch  # the fixture model is the fast recipe's
    assert info["architecture"] == arch and info["dataset"] == "mnist"
    assert info["parameters"] == count_params(ARCHITECTURES[arch]) > 50_000
    assert info["test_metrics"]["accuracy"] >= 0.98


def test_predict_upload_same_numbers_as_cli_path(client, trained_model):
    data = png_of_one()
    r = client.post("/api/predict", files={"file": ("one.png", data, "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert body["digit"] == 1 and len(body["probabilities"]) == 10 and np.array(body["input"]).shape == (28, 28)
    expected = trained_model.predict(prepare(decode(data)).image[None])[0]
    assert np.abs(np.array(body["probabilities"]) - expected).max() < 1e-6
    assert body["confidence"] == pytest.approx(expected.max(), abs=1e-6)


def test_predict_pixels(client, mnist, trained_model):
    r = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
    assert r.status_code == 200 and r.json()["digit"] == 7
    expected = trained_model.predict(mnist.test_images[:1])[0]
    assert np.abs(np.array(r.json()["probabilities"]) - expected).max() < 1e-6


def test_batch_in_order(client, mnist):
    images = [{"pixels": mnist.test_images[i].tolist()} for i in range(5)]
    r = client.post("/api/predict/batch", json={"images": images})
    assert r.status_code == 200 and [p["digit"] for p in r.json()] == list(mnist.test_labels[:5])
    files = [("files", ("a.png", png_of_one(), "image/png")),
             ("files", ("b.png", _png(255 - mnist.test_images[1]), "image/png"))]
    r = client.post("/api/predict/batch", files=files)
    assert r.status_code == 200 and [p["digit"] for p in r.json()] == [1, 2]
    assert [p["source"] for p in r.json()] == ["a.png", "b.png"]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).resize((100, 100)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("body, field", [
    ({"pixels": [[0] * 28] * 27}, "pixels"),
    ({"pixels": [[0] * 27] * 28}, "pixels.0"),
    ({"pixels": [[0] * 27 + [300]] * 28}, "pixels.0.27"),
    ({"pixels": [[0] * 27 + ["x"]] * 28}, "pixels.0.27"),
    ({"pictures": []}, "pixels"),
])
def test_wrong_json_shape_is_422_naming_field(client, body, field):
    r = client.post("/api/predict", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(field + ":"), r.json()


def test_pixels_scaled_to_0_1_are_refused_not_misread(client, mnist):
    """0..1 values would round to a blank image and a confident wrong digit: 422 saying what to do."""
    scaled = (mnist.test_images[0] / 255).tolist()
    r = client.post("/api/predict", json={"pixels": scaled})
    assert r.status_code == 422 and r.json()["detail"].startswith("pixels: all values lie in 0..1")
    r = client.post("/api/predict/batch", json={"images": [{"pixels": mnist.test_images[0].tolist()},
                                                           {"pixels": scaled}]})
    assert r.status_code == 422 and r.json()["detail"].startswith("images[1].pixels: all values lie in 0..1")
    blank = client.post("/api/predict", json={"pixels": [[0] * 28] * 28})  # an empty canvas is still answered
    assert blank.status_code == 200


def test_not_json(client):
    r = client.post("/api/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]


def test_not_an_image_is_415(client):
    r = client.post("/api/predict", files={"file": ("x.png", b"hello there", "image/png")})
    assert r.status_code == 415 and "x.png: not an image" in r.json()["detail"]


def test_corrupt_image_is_422(client):
    r = client.post("/api/predict", files={"file": ("cut.png", png_of_one()[:300], "image/png")})
    assert r.status_code == 422 and "cut.png" in r.json()["detail"]


def test_bomb_is_refused(client):
    r = client.post("/api/predict", files={"file": ("bomb.png", bomb_png(8000), "image/png")})
    assert r.status_code == 422 and "bomb" in r.json()["detail"]
    assert client.get("/api/health").status_code == 200


def test_upload_over_limit_is_413(client):
    r = client.post("/api/predict", files={"file": ("big.png", b"\x00" * 300_000, "image/png")})
    assert r.status_code == 413 and "larger than the limit of 262144 bytes" in r.json()["detail"]
    assert client.get("/api/health").status_code == 200


def test_streamed_body_over_limit_is_413(client):
    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for _ in range(40):
            yield b"\x00" * 16384

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_missing_file_field_and_wrong_content_type(client):
    r = client.post("/api/predict", files={"picture": ("a.png", png_of_one(), "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = client.post("/api/predict", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_batch_limits(client):
    r = client.post("/api/predict/batch", json={"images": []})
    assert r.status_code == 422 and r.json()["detail"].startswith("images:")
    r = client.post("/api/predict/batch", json={"images": [{"pixels": [[0] * 28] * 28}] * 65})
    assert r.status_code == 422


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "http" not in page.text.split("<script>")[1]
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/predict/batch", "/api/model", "/api/health"} <= set(schema["paths"])
    content = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
