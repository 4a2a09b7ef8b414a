"""The drawing page in a real browser: Debian's Chromium driven by Playwright, against the real server."""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


@contextlib.contextmanager
def serving(model: Path) -> Iterator[str]:
    """`digitlab serve MODEL` on a free loopback port, for the duration: yields its URL ("http://127.0.0.1:N/")."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", str(model), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "api/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(proc.stdout.read().decode()) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(trained_model_path):
    with serving(trained_model_path) as url:
        yield url


def launch(playwright):
    """Debian's Chromium (Playwright must not download one), headless, with no traffic of its own."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh as root (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page(viewport={"width": 900, "height": 700})
    page.goto(server)
    yield page
    page.close()


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


def settle(page) -> None:
    """Wait until the page's CSS transitions (the probability bars grow over 0.15 s) have finished."""
    page.wait_for_function("document.getAnimations().length === 0", timeout=10_000)


def bar_fractions(page) -> list[tuple[float, float]]:
    """Per digit: (drawn width of its bar / the bar's full width, the percentage printed beside it / 100)."""
    return page.evaluate("""() => [...Array(10).keys()].map(d => {
        const bar = document.getElementById('bar' + d);
        return [bar.firstElementChild.getBoundingClientRect().width / bar.getBoundingClientRect().width,
                parseFloat(document.getElementById('p' + d).textContent) / 100]; })""")


SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]  # also the 7 of docs/page.png (scripts/screenshot.py)


@pytest.mark.parametrize("digit, strokes", [
    ("1", [[(0.5, 0.15), (0.5, 0.85)]]),
    ("7", SEVEN),
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
    # Once the bars have settled, each is as long as the probability printed beside it (so is a screenshot).
    settle(page)
    for drawn, printed in bar_fractions(page):
        assert abs(drawn - printed) < 0.01, (drawn, printed)
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


def test_api_docs_render_offline(server, browser):
    """/docs is Swagger UI served by the app itself (fastapi-offline): it renders, lists the operations, and
    no request leaves 127.0.0.1 (a CDN asset would leave the page blank offline)."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(server + "docs")
        page.wait_for_selector('.opblock-summary-path[data-path="/api/predict"]', timeout=15_000)
        assert page.locator(".opblock").count() >= 3
        assert page.locator(".info .title").first.text_content().startswith("digitlab")
        local = server.rstrip("/")
        outside = [u for u in requests if not (u.startswith(local + "/") or u.startswith(("data:", "blob:")))]
        assert not outside, outside
        assert any(u.endswith(".js") for u in requests)  # the assets came from the server itself
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "docs.png"))
    finally:
        page.close()


def test_number_mode_reads_several_digits_with_boxes(page):
    """The "Number" mode: a wider pad, the reading posted to /api/read, a box drawn around each digit."""
    page.check("#number")
    assert page.evaluate("() => document.getElementById('pad').width") == 840
    draw(page, [[(x, 0.2), (x, 0.8)] for x in (0.2, 0.5, 0.8)])  # three strokes: "111"
    page.wait_for_function("document.getElementById('reading').textContent === '111'", timeout=10_000)
    boxed = page.evaluate("() => { const c = document.getElementById('boxes'); const d = c.getContext('2d')"
                          ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
                          " for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }")
    assert boxed > 100  # the boxes' outlines and labels
    page.screenshot(path=str(SHOTS / "number-111.png"))
    page.uncheck("#number")
    assert page.evaluate("() => document.getElementById('pad').width") == 280


def test_number_boxes_after_drawing_over_a_picked_file(page):
    """Boxes are drawn in the sent picture's pixels mapped onto the pad: a picked file is scaled to fit,
    but once the person draws over it the pad itself is sent, so the mapping is the pad's own (the boxes
    landed offset and enlarged, at the picked file's scale)."""
    page.check("#number")
    wide = Image.new("L", (1680, 400), 255)
    buf = io.BytesIO()
    wide.save(buf, "PNG")
    page.set_input_files("#file", files=[{"name": "wide.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function("view.s < 1", timeout=10_000)
    draw(page, [[(0.5, 0.2), (0.5, 0.8)]])
    assert page.evaluate("() => [view.s, view.x, view.y]") == [1, 0, 0]
    page.uncheck("#number")


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
