"""The drawing page in a real browser: Debian's Chromium driven by Playwright, against the real server."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_model_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", str(trained_model_path), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "api/health", timeout=1)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh as root (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 900, "height": 700})
        page.goto(server)
        yield page
        browser.close()


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes in canvas fractions (0..1), drawn with real mouse events."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        x0, y0 = stroke[0]
        page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
        page.mouse.down()
        for (xa, ya), (xb, yb) in zip(stroke, stroke[1:], strict=False):
            for t in range(1, 11):  # intermediate points, as a hand would produce
                x, y = xa + (xb - xa) * t / 10, ya + (yb - ya) * t / 10
                page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.up()


def shown_digit(page, expected: str) -> str:
    page.wait_for_function(f"document.getElementById('digit').textContent === {expected!r}", timeout=10_000)
    return page.locator("#digit").text_content()


@pytest.mark.parametrize("digit, strokes", [
    ("1", [[(0.5, 0.15), (0.5, 0.85)]]),
    ("7", [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]),
])
def test_draw_digit(page, digit, strokes):
    page.click("#clear")
    assert page.locator("#digit").text_content() == "–"
    draw(page, strokes)
    assert shown_digit(page, digit) == digit
    bars = page.locator(".bar").count()
    assert bars == 10
    # The 28x28 image the model saw is drawn on the page.
    lit = page.evaluate("() => { const d = document.getElementById('seen').getContext('2d')"
                        ".getImageData(0, 0, 28, 28).data; let n = 0; for (let i = 0; i < d.length; i += 4)"
                        " if (d[i] > 128) n++; return n; }")
    assert lit > 10
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"drawn-{digit}.png"))


def test_readable_on_a_phone(page):
    """A phone-sized viewport: nothing wider than the screen, the pad and the answer both on the page."""
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.click("#clear")
        draw(page, [[(0.5, 0.15), (0.5, 0.85)]])
        assert shown_digit(page, "1") == "1"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        pad = page.locator("#pad").bounding_box()
        assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "phone.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 900, "height": 700})


def shown_text(page, expected: str) -> str:
    page.wait_for_function(f"document.getElementById('digit').textContent === {expected!r}", timeout=10_000)
    return page.locator("#digit").text_content()


def test_states_in_words(page):
    """No digit, several digits: the record's status in words where the digit would be."""
    page.click("#clear")
    draw(page, [[(0.2, 0.25), (0.2, 0.75)], [(0.8, 0.25), (0.8, 0.75)]])  # "11", far apart
    assert shown_text(page, "several digits (2 marks)") == "several digits (2 marks)"
    assert page.locator("#conf").text_content() == ""
    blank = Image.new("L", (200, 200), 255)
    buf = io.BytesIO()
    blank.save(buf, "PNG")
    page.set_input_files("#file", files=[{"name": "blank.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    assert shown_text(page, "no digit") == "no digit"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "no-digit.png"))


def test_not_a_digit_in_words(page):
    """The page's wording for a not_a_digit record (the server's answer replaced: which drawings a
    model rejects is tested at the API, tests/test_predict.py)."""
    def answer(route):
        body = route.fetch().json()
        body.update(status="not_a_digit", digit=None, label=None, confidence=None)
        route.fulfill(json=body)

    page.route("**/api/predict", answer)
    try:
        page.click("#clear")
        draw(page, [[(0.5, 0.15), (0.5, 0.85)]])
        assert shown_text(page, "not a digit") == "not a digit"
        assert page.locator(".bar.top").count() == 0
    finally:
        page.unroute("**/api/predict")


def _red_pixels(page) -> int:
    """Pixels of the 28x28 "what the model saw" canvas that are clearly red (the attribution overlay)."""
    return page.evaluate("() => { const d = document.getElementById('seen').getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data; let n = 0; for (let i = 0; i < d.length; i += 4)"
                         " if (d[i] > 120 && d[i] > 2 * d[i + 1]) n++; return n; }")


def test_attribution_toggle(page):
    """"show why" overlays the attribution (POST /api/explain) on what the model saw; off again, grey."""
    page.click("#clear")
    draw(page, [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]])
    shown_digit(page, "7")
    assert _red_pixels(page) == 0
    with page.expect_response("**/api/explain") as response:
        page.check("#why")
    assert response.value.ok and len(response.value.json()["attribution"]) == 28
    page.wait_for_function("() => { const d = document.getElementById('seen').getContext('2d')"
                           ".getImageData(0, 0, 28, 28).data; for (let i = 0; i < d.length; i += 4)"
                           " if (d[i] > 120 && d[i] > 2 * d[i + 1]) return true; return false; }", timeout=10_000)
    assert _red_pixels(page) > 5 and page.locator("#digit").text_content() == "7"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "why-7.png"))
    with page.expect_response("**/api/predict"):
        page.uncheck("#why")
    page.wait_for_function("() => { const d = document.getElementById('seen').getContext('2d')"
                           ".getImageData(0, 0, 28, 28).data; for (let i = 0; i < d.length; i += 4)"
                           " if (d[i] !== d[i + 1]) return false; return true; }", timeout=10_000)
    assert _red_pixels(page) == 0
