"""The HTTP API in-process (TestClient / ASGI): every endpoint, every JSON form, every kind of bad input."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from digitlab.images import load_image
from digitlab.model import ARCHITECTURES, count_params
from digitlab.prepare import prepare
from digitlab.serve.app import create_app
from tests.conftest import FIXTURE_NET
from tests.test_images import bomb_png


@pytest.fixture(scope="module")
def client(trained_model):
    return TestClient(create_app(trained_model, max_upload=256 * 1024), base_url="http://localhost")


def drawn_one(size: int = 200) -> Image.Image:
    """A "1": a dark vertical stroke on white paper."""
    im = Image.new("L", (size, size), 255)
    ImageDraw.Draw(im).line([(size // 2, size // 8), (size // 2, size - size // 8)], fill=0, width=max(2, size // 12))
    return im


def encoded(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_of_one() -> bytes:
    return encoded(drawn_one())


def test_health_and_model(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/model").json()
    arch = FIXTURE_NET["arch"]  # the fixture model's network (tests/conftest.py)
    assert info["architecture"] == arch and info["dataset"] == "mnist"
    assert info["parameters"] == count_params(ARCHITECTURES[arch]) > 50_000
    assert info["test_metrics"]["accuracy"] >= 0.98


def test_model_info_shows_no_local_paths(client, trained_model_path):
    """Training metadata records where the model was written; the API shows the file name only."""
    text = client.get("/api/model").text
    assert str(trained_model_path.parent) not in text and not re.search(r'"(/|[A-Za-z]:\\\\)', text)
    assert trained_model_path.name in text


def test_model_info_keeps_class_labels_whole(trained_model):
    """Fashion-MNIST's "T-shirt/top" is a label, not a path."""
    import copy

    fashion = copy.copy(trained_model)
    fashion.metadata = {**trained_model.metadata, "classes": ["T-shirt/top", *trained_model.classes[1:]]}
    info = TestClient(create_app(fashion), base_url="http://localhost").get("/api/model").json()
    assert info["classes"][0] == "T-shirt/top"


def test_predict_upload_same_numbers_as_cli_path(client, trained_model):
    data = png_of_one()
    r = client.post("/api/predict", files={"file": ("one.png", data, "image/png")})
    assert r.status_code == 200
    body = r.json()
    assert body["digit"] == 1 and len(body["probabilities"]) == 10 and np.array(body["input"]).shape == (28, 28)
    seen = prepare(load_image(data)).image
    assert (np.array(body["input"]) == seen).all()
    expected = trained_model.predict(seen[None])[0]
    assert np.abs(np.array(body["probabilities"]) - expected).max() < 1e-6


def test_mnist_pixels_pass_through(client, mnist, trained_model):
    r = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
    assert r.status_code == 200 and r.json()["digit"] == 7
    assert (np.array(r.json()["input"]) == mnist.test_images[0]).all()
    expected = trained_model.predict(mnist.test_images[:1])[0]
    assert np.abs(np.array(r.json()["probabilities"]) - expected).max() < 1e-6


def test_json_pixels_are_prepared(client):
    """Dark ink on white sent as JSON pixels used to reach the model as is (white background): now it is
    prepared like the same picture uploaded as a file."""
    paper = np.asarray(drawn_one(28))
    r = client.post("/api/predict", json={"pixels": paper.tolist()})
    assert r.status_code == 200
    seen = np.array(r.json()["input"])
    assert (seen == prepare(paper).image).all() and seen[0, 0] == 0 and r.json()["digit"] == 1


def canvas_forms() -> dict[str, dict]:
    """The same drawing in every accepted JSON form."""
    grey = np.asarray(drawn_one(56))
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[..., 3] = 255 - grey  # black ink on a transparent canvas, as getImageData() returns it
    png = encoded(drawn_one(56))
    return {
        "rows 0..255": {"pixels": grey.tolist()},
        "rows 0..1": {"pixels": (grey / 255).tolist()},
        "rows 0..1 stated": {"pixels": (grey / 255).tolist(), "range": "0-1"},
        "flat with width and height": {"pixels": grey.ravel().tolist(), "width": 56, "height": 56},
        "flat with width only": {"pixels": grey.ravel().tolist(), "width": 56},
        "canvas rgba": {"rgba": rgba.ravel().tolist(), "width": 56, "height": 56},
        "data URL": {"image": "data:image/png;base64," + base64.b64encode(png).decode()},
        "bare base64": {"image": base64.b64encode(png).decode()},
    }


@pytest.mark.parametrize("form", list(canvas_forms()))
def test_every_json_form_reads_the_drawing(client, form):
    r = client.post("/api/predict", json=canvas_forms()[form])
    assert r.status_code == 200, r.json()
    assert r.json()["digit"] == 1 and r.json()["confidence"] > 0.5


def test_flat_784_values_are_28x28(client, mnist):
    flat = client.post("/api/predict", json={"pixels": mnist.test_images[0].ravel().tolist()}).json()
    rows = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()}).json()
    assert flat["probabilities"] == rows["probabilities"]


def test_range_rule(client, mnist):
    """Without "range", values all within 0..1 are 0..1; with it, the stated scale wins."""
    image = mnist.test_images[0]
    as_255 = client.post("/api/predict", json={"pixels": image.tolist()}).json()
    as_1 = client.post("/api/predict", json={"pixels": (image / 255).tolist()}).json()
    assert np.abs(np.array(as_1["input"]) - image).max() <= 1 and as_1["digit"] == as_255["digit"] == 7
    faint = client.post("/api/predict", json={"pixels": (image / 255).tolist(), "range": "0-255"}).json()
    assert np.array(faint["input"]).max() <= 1  # taken at its word: next to nothing
    r = client.post("/api/predict", json={"pixels": image.tolist(), "range": "0-1"})
    assert r.status_code == 422 and r.json()["detail"].startswith('pixels: "range" is "0-1" but a value is 255')


@pytest.mark.parametrize("body, start", [
    ({"pictures": []}, "body: expected one of"),
    ([1, 2, 3], "body: expected one of"),
    ({"pixels": [[0]], "image": "AAAA"}, "body: expected one of"),
    ({"pixels": [[0] * 27 + [300]] * 28}, "pixels.0.27: Input should be less than or equal to 255"),
    ({"pixels": [[0] * 27 + ["x"]] * 28}, "pixels.0.27:"),
    ({"pixels": [[0] * 28] * 27 + [[0] * 27]}, "pixels: rows of different lengths"),
    ({"pixels": [0] * 100}, "pixels: a flat list of 100 values needs width and height"),
    ({"pixels": [0] * 100, "width": 10, "height": 11}, "pixels: 100 values, but width 10 x height 11 = 110"),
    ({"pixels": [[0] * 4] * 4, "width": 5}, "pixels: 4 rows of 4 values, but height None width 5"),
    ({"pixels": [[0] * 4] * 4, "range": "0-100"}, "range:"),
    ({"pixels": [[0] * 4] * 4, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"rgba": [0] * 15, "width": 2, "height": 2}, "rgba: 15 values, but 4 x width 2 x height 2 = 16"),
    ({"rgba": [0] * 16, "width": 2}, "height: Field required"),
    ({"image": "data:image/png,rawbytes"}, "image: expected a base64 data URL"),
    ({"image": "not base64!"}, "image: not valid base64"),
])
def test_refused_forms_are_422_naming_the_field(client, body, start):
    r = client.post("/api/predict", json=body)
    assert r.status_code == 422 and r.json()["detail"].startswith(start), r.json()
    if start.startswith("body"):
        assert '"rgba"' in r.json()["detail"] and '"image"' in r.json()["detail"]  # shows the accepted forms


def test_data_url_of_a_non_image(client):
    r = client.post("/api/predict", json={"image": base64.b64encode(b"hello there").decode()})
    assert r.status_code == 415 and "image: not an image" in r.json()["detail"]


def test_batch_in_order(client, mnist):
    images = [{"pixels": mnist.test_images[i].tolist()} for i in range(5)]
    r = client.post("/api/predict/batch", json={"images": images})
    assert r.status_code == 200 and [p["digit"] for p in r.json()] == list(mnist.test_labels[:5])
    files = [("files", ("a.png", png_of_one(), "image/png")),
             ("files", ("b.png", encoded(Image.fromarray(255 - mnist.test_images[1]).resize((100, 100))), "image/png"))]
    r = client.post("/api/predict/batch", files=files)
    assert r.status_code == 200 and [p["digit"] for p in r.json()] == [1, 2]
    assert [p["source"] for p in r.json()] == ["a.png", "b.png"]


def test_batch_of_mixed_forms(client):
    forms = canvas_forms()
    r = client.post("/api/predict/batch", json={"images": list(forms.values())})
    assert r.status_code == 200 and [p["digit"] for p in r.json()] == [1] * len(forms)
    assert [p["source"] for p in r.json()] == [f"images[{i}]" for i in range(len(forms))]
    r = client.post("/api/predict/batch", json={"images": [forms["rows 0..255"], {"pixels": [0] * 3}]})
    assert r.status_code == 200 and r.json()[0]["digit"] == 1  # a form that holds no picture: its own error
    assert r.json()[1] == {"source": "images[1]",
                           "error": "images[1].pixels: a flat list of 3 values needs width and height "
                                    "(784 values alone: 28x28)"}
    r = client.post("/api/predict/batch", json={"images": [forms["rows 0..255"], {"pixels": [0] * 3, "x": 1}]})
    assert r.status_code == 422  # not the documented shape: the request itself is wrong


def test_batch_answers_every_file(client):
    """One bad file does not fail the batch: every file has its record, in order; the bad ones say why."""
    files = [("files", ("text.png", b"hello there", "image/png")), ("files", ("one.png", png_of_one(), "image/png")),
             ("files", ("cut.png", png_of_one()[:300], "image/png")), ("files", ("empty.png", b"", "image/png"))]
    r = client.post("/api/predict/batch", files=files)
    assert r.status_code == 200, r.text
    records = r.json()
    assert [x["source"] for x in records] == ["text.png", "one.png", "cut.png", "empty.png"]
    assert records[1]["digit"] == 1 and "error" not in records[1]
    for bad in (records[0], records[2], records[3]):
        assert set(bad) == {"source", "error"} and bad["error"].startswith(bad["source"] + ":"), bad
    assert "not an image" in records[0]["error"]
    single = client.post("/api/predict", files={"file": files[2][1]})  # the same words as the single answer
    assert single.status_code == 422 and single.json()["detail"] == records[2]["error"]
    data_urls = {"images": [{"image": "bm90IGJhc2U2NA=="}, {"image": "%%%"}, {"pixels": [[0] * 28] * 28}]}
    r = client.post("/api/predict/batch", json=data_urls)
    assert r.status_code == 200 and [sorted(x)[:2] for x in r.json()[:2]] == [["error", "source"]] * 2
    assert r.json()[2]["status"] == "empty"


def test_batch_error_records_are_documented(client):
    items = client.get("/openapi.json").json()["paths"]["/api/predict/batch"]["post"]["responses"]["200"]
    refs = json.dumps(items)
    assert "Failed" in refs and "Prediction" in refs
    failed = client.get("/openapi.json").json()["components"]["schemas"]["Failed"]
    assert set(failed["required"]) == {"source", "error"}


def test_batch_limits(client):
    r = client.post("/api/predict/batch", json={"images": []})
    assert r.status_code == 422 and r.json()["detail"].startswith("images:")
    r = client.post("/api/predict/batch", json={"images": [{"pixels": [[0] * 28] * 28}] * 65})
    assert r.status_code == 413 and r.json()["detail"] == "at most 64 images per batch; got 65"
    for n, got in ((65, "65"), (70, "more than 65")):
        files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(n)]
        r = client.post("/api/predict/batch", files=files)
        assert r.status_code == 413 and r.json()["detail"] == f"at most 64 images per batch; got {got}"
    files = [("files", (f"{i}.png", png_of_one(), "image/png")) for i in range(64)]
    assert client.post("/api/predict/batch", files=files).status_code == 200  # the limit itself is fine
    r = client.post("/api/predict/batch", json={"pixels": [[0]]})
    assert r.status_code == 422 and r.json()["detail"].startswith('body: expected {"images"')


@pytest.mark.parametrize("path", ["/api/predict", "/api/predict/batch"])
def test_deeply_nested_json_is_422(client, path):
    r = client.post(path, content=b"[" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("body: not valid JSON")
    r = client.post(path, content=b'{"pixels": ' + b"[" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_not_json(client):
    r = client.post("/api/predict", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = client.post("/api/predict", content=b'{"pixels": [[NaN]]}', headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("ctype, status", [
    ("application/json", 200), ("APPLICATION/JSON", 200), ("Application/Json ; charset=utf-8", 200),
    ("application/jsonpatch", 415), ("application/json-seq", 415), ("text/json", 415), ("", 415),
])
def test_content_type_is_a_media_type(client, ctype, status):
    body = json.dumps({"pixels": [[0] * 28] * 28}).encode()
    r = client.post("/api/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text


def test_multipart_media_type_any_case(client):
    req = client.build_request("POST", "/api/predict", files={"file": ("one.png", png_of_one(), "image/png")})
    req.headers["content-type"] = req.headers["content-type"].replace("multipart/form-data", "Multipart/Form-Data")
    assert client.send(req).json()["digit"] == 1


def test_text_where_a_file_was_expected(client):
    """A canvas app posting its data URL as a text form field gets told so, not "field missing"."""
    url = "data:image/png;base64," + base64.b64encode(png_of_one()).decode()
    for extra in ({"files": {"note": ("note.txt", b"hi", "text/plain")}}, {}):  # multipart; urlencoded
        r = client.post("/api/predict", data={"file": url}, **extra)
        assert r.status_code == 422
        assert r.json()["detail"].startswith("multipart field 'file': text was sent where a file was expected")
        assert '{"image": "data:..."}' in r.json()["detail"]
    r = client.post("/api/predict/batch", data={"files": "hello"})
    assert r.status_code == 422 and "text was sent where a file was expected" in r.json()["detail"]


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


def test_request_pixel_cap_and_downscaled_jpeg(trained_model):
    """A picture over the request's pixel cap is refused, except a JPEG, which is decoded at the 1/2, 1/4
    or 1/8 scale that fits (libjpeg draft mode): phone photos larger than the cap still read."""
    c = TestClient(create_app(trained_model, max_request_pixels=1_100_000), base_url="http://localhost")
    big = drawn_one(1200)
    r = c.post("/api/predict", files={"file": ("big.png", encoded(big), "image/png")})
    assert r.status_code == 422 and "more than the limit of 1,100,000" in r.json()["detail"]
    r = c.post("/api/predict", files={"file": ("big.jpg", encoded(big.resize((2000, 2000)), "JPEG"), "image/jpeg")})
    assert r.status_code == 200 and r.json()["digit"] == 1
    two = [("files", (f"{i}.png", encoded(drawn_one(800)), "image/png")) for i in range(2)]  # 640,000 px each
    r = c.post("/api/predict/batch", files=two)  # the cap is for the whole request: the second is refused
    assert r.status_code == 200 and r.json()[0]["digit"] == 1 and r.json()[1]["error"].startswith("1.png:")


def test_7000_square_rgba_png_refused_before_decoding(client):
    r = client.post("/api/predict", files={"file": ("huge.png", huge_rgba_png(7000), "image/png")})
    assert r.status_code == 422 and "7000x7000" in r.json()["detail"]


def huge_rgba_png(side: int) -> bytes:
    """A valid RGBA PNG of side x side transparent pixels; 7000 gives ~190 KB that decode to 196 MB."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = bytes(1 + 4 * side)
    raw = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


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


@pytest.mark.parametrize("host, status", [
    ("localhost", 200), ("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200),
    ("evil.example", 400), ("127.0.0.2:8000", 400), ("localhost.evil.example", 400),
])
def test_only_loopback_host_names_by_default(client, host, status):
    """A page using DNS rebinding reaches the server under its own name: refused."""
    assert client.get("/api/model", headers={"host": host}).status_code == status


def test_allowed_hosts_configurable(trained_model):
    c = TestClient(create_app(trained_model, allowed_hosts=["127.0.0.1", "digits.lan"]), base_url="http://digits.lan")
    assert c.get("/api/health").status_code == 200
    assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 400


def _refs(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


def test_openapi_refs_resolve_and_errors_are_documented(client):
    schema = client.get("/openapi.json").json()
    refs = _refs(schema)
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    missing = {r for r in refs if r.rsplit("/", 1)[1] not in schema["components"]["schemas"]}
    assert not missing, missing
    for path in ("/api/predict", "/api/predict/batch"):
        post = schema["paths"][path]["post"]
        assert {"200", "413", "415", "422", "503"} <= set(post["responses"])
        assert post["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"}
        assert {"multipart/form-data", "application/json"} <= set(post["requestBody"]["content"])
    forms = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    assert [f["$ref"].rsplit("/", 1)[1] for f in forms] == ["PixelsIn", "RgbaIn", "ImageIn"]
    for name in ("PixelsIn", "RgbaIn", "ImageIn"):
        examples = schema["components"]["schemas"][name]["examples"]
        for example in examples:  # every documented example is answered
            assert client.post("/api/predict", json=example).status_code == 200, (name, example)


def test_page_and_offline_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "http" not in page.text.split("<script>")[1]
    for url in ("/docs", "/redoc"):
        html = client.get(url)
        assert html.status_code == 200 and not re.search(r"https?://", html.text), url  # no CDN
        assets = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"](/[^'"]+)['"]""", html.text)
        assert len(assets) >= 2 and all(client.get(a).status_code == 200 for a in assets), assets


def _asgi(app, transport_kw=None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, **(transport_kw or {})),
                             base_url="http://localhost")


def test_busy_slots_answer_503_with_retry_after(trained_model):
    """With every decode slot taken for longer than the queue wait, a request gets 503 and Retry-After."""
    app = create_app(trained_model, slots=1, queue_wait=0.01)
    data = encoded(drawn_one(1400))  # ~2 MP: slow enough to hold the slot

    async def burst():
        async with _asgi(app) as c:
            return await asyncio.gather(*(c.post("/api/predict", files={"file": ("a.png", data, "image/png")})
                                          for _ in range(4)))

    answers = asyncio.run(burst())
    codes = sorted(r.status_code for r in answers)
    assert codes[0] == 200 and 503 in codes, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["detail"].startswith("busy:")


def test_slow_body_gets_408(trained_model):
    app = create_app(trained_model, body_timeout=0.3)

    async def slow():
        yield b'{"pixels": '
        await asyncio.sleep(2)
        yield b"[[0]]}"

    async def send():
        async with _asgi(app) as c:
            return await c.post("/api/predict", content=slow(), headers={"content-type": "application/json"})

    r = asyncio.run(send())
    assert r.status_code == 408 and r.json()["detail"] == "body: not received within 0.3 s"


def test_client_gone_mid_body_is_quiet(trained_model, caplog):
    """A client that disconnects mid-body: no exception out of the app (the server would log a traceback)."""
    app = create_app(trained_model)
    messages = iter([{"type": "http.request", "body": b'{"pixels": [[0,', "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                         (b"content-length", b"100")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))  # raises without the handler
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_small_pictures_are_prepared_on_the_event_loop_large_ones_in_a_thread(trained_model, monkeypatch):
    """JSON pixels or a 28x28 upload is a fraction of a millisecond of work: handing it to a thread and
    back cost more. Pictures over INLINE_PIXELS (a 280x280 canvas) go to the decode threads."""
    import digitlab.serve.app as serve_app

    on_loop = []

    def recording_prepare(picture):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:  # a worker thread has no running loop
            on_loop.append(False)
        return prepare(picture)

    monkeypatch.setattr(serve_app, "prepare", recording_prepare)
    app = create_app(trained_model)
    with TestClient(app, base_url="http://localhost") as c:
        for size in (60, 280):  # 3,600 and 78,400 pixels; INLINE_PIXELS is 4,096
            data = encoded(drawn_one(size).convert("RGBA"))
            r = c.post("/api/predict", files={"file": ("one.png", data, "image/png")})
            assert r.status_code == 200 and r.json()["digit"] is not None
        assert c.post("/api/predict", json={"pixels": np.zeros((28, 28), int).tolist()}).status_code == 200
    assert on_loop == [True, False, True]


def test_the_server_runs_inference_on_one_thread(tiny_model_path):
    """onnxruntime's default pool (a thread per core, spinning between runs) burned about a third of a
    canvas request's CPU beside the work; the server's requests are single pictures."""
    import digitlab

    model = digitlab.load(tiny_model_path)
    with TestClient(create_app(model), base_url="http://localhost") as c:
        assert c.post("/api/predict", json={"pixels": np.zeros((28, 28), int).tolist()}).status_code == 200
        assert c.post("/api/predict", files={"file": ("one.png", encoded(drawn_one()), "image/png")}).status_code == 200
    session = model._onnx_session()
    assert session is not None and session.get_session_options().intra_op_num_threads == 1


def test_plain_png_uploads_reach_prepare_within_its_pixel_bound(tiny_model_path, monkeypatch):
    """Plain PNGs skip Pillow (decode_plain_png) and arrive as float arrays, which _reduced leaves alone: a
    2.25 MP one reached prepare() whole, past PREPARE_PIXELS (the server's bound on prepare's float copies)."""
    import digitlab
    import digitlab.serve.app as serve_app
    from digitlab.serve import PREPARE_PIXELS

    sizes = []

    def recording_prepare(picture):
        sizes.append(picture.width * picture.height if isinstance(picture, Image.Image) else picture.size)
        return prepare(picture)

    monkeypatch.setattr(serve_app, "prepare", recording_prepare)
    with TestClient(create_app(digitlab.load(tiny_model_path)), base_url="http://localhost") as c:
        for side in (280, 1500):  # 78,400 and 2,250,000 pixels
            data = encoded(drawn_one(side).convert("RGB"))
            assert c.post("/api/predict", files={"file": ("one.png", data, "image/png")}).status_code == 200
    assert sizes[0] == 280 * 280 and 0 < sizes[1] <= PREPARE_PIXELS


def test_concurrent_requests_share_one_model_call(tiny_model_path, mnist, forward_calls):
    """Requests that reach the model within one turn of the event loop run through the network as one
    batch (Batcher), each still answered with its own record; a request alone is a batch of one."""
    import digitlab

    batches = forward_calls
    app = create_app(digitlab.load(tiny_model_path))
    digits = mnist.test_images[:8]

    async def burst():
        async with _asgi(app) as c:
            alone = await c.post("/api/predict", json={"pixels": digits[0].tolist()})
            together = await asyncio.gather(*(c.post("/api/predict", json={"pixels": d.tolist()}) for d in digits))
            return alone, together

    alone, together = asyncio.run(burst())
    assert batches[0] == 1 and sum(batches[1:]) == 8 and len(batches) < 9, batches
    assert alone.json() == together[0].json()
    assert [r.json()["input"] for r in together] == [d.tolist() for d in digits]


def test_batches_are_cut_at_max_batch_and_failures_reach_every_request(tiny_model_path, mnist, monkeypatch,
                                                                       forward_calls):
    """A Batcher never runs more than max_batch pictures at once, answers each request its own records,
    and a batch whose model call fails raises that error in every request of it."""
    import digitlab
    import digitlab.serve.app as serve_app

    model = digitlab.load(tiny_model_path)
    prepared = [prepare(d) for d in mnist.test_images[:8]]
    batches = forward_calls

    async def eight(batcher):
        return await asyncio.gather(*(batcher.records([p], [f"d{i}"]) for i, p in enumerate(prepared)),
                                    return_exceptions=True)

    answers = asyncio.run(eight(serve_app.Batcher(model, max_batch=3)))
    assert max(batches) <= 3 and sum(batches) == 8
    assert [a[0]["source"] for a in answers] == [f"d{i}" for i in range(8)]

    def broken(*args, **kwargs):
        raise RuntimeError("model failed")

    monkeypatch.setattr(serve_app, "predict_records", broken)
    answers = asyncio.run(eight(serve_app.Batcher(model)))
    assert all(isinstance(a, RuntimeError) for a in answers)


def test_read_uses_the_model_files_piece_verifier(tmp_path, tiny_model_path, monkeypatch):
    """/api/read reads with the piece verifier beside the model file (MODEL.pieces.safetensors) or the one
    named, as `digitlab read` does; /api/model says whether one is loaded; a digit model given as the
    verifier is refused when the app is made."""
    import shutil

    import digitlab.serve.app as serve_app
    from digitlab import modelfile
    from digitlab.errors import ModelFileError
    from digitlab.model import ArchConfig, build_torch
    from digitlab.pieces import PIECE_CLASSES, companion_path

    cfg = ArchConfig(classes=len(PIECE_CLASSES))
    weights = {k: v.detach().numpy() for k, v in build_torch(cfg).state_dict().items()}
    model = shutil.copy(tiny_model_path, tmp_path / "m.safetensors")
    modelfile.save(companion_path(model), weights, {"architecture": "tutorial", "arch_config": cfg.to_dict(),
                                                     "dataset": "mnist", "classes": PIECE_CLASSES})
    seen = []
    real = serve_app.read

    def spy(m, picture, source, pieces=None):
        seen.append(pieces)
        return real(m, picture, source, pieces=pieces)

    monkeypatch.setattr(serve_app, "read", spy)
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 13:15] = 255
    for app, loaded in ((create_app(model), True), (create_app(tiny_model_path), False)):
        c = TestClient(app, base_url="http://localhost")
        assert c.get("/api/model").json()["piece_verifier"] is loaded
        assert c.post("/api/read", json={"pixels": digit.tolist()}).status_code == 200
        assert (seen.pop() is not None) is loaded and (not loaded or seen == [])
    with pytest.raises(ModelFileError, match="not a piece verifier"):
        create_app(model, pieces=tiny_model_path)
