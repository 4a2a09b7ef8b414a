"""The real server (`digitlab.serve.app.run`, Granian) on 127.0.0.1, over raw sockets: the limits that
only a server has (header size, idle and half-sent connections), memory per request, and starvation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image, ImageDraw

from digitlab.serve import HEADER_TIMEOUT_S
from tests.test_serve import huge_rgba_png

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from siege import still_open  # noqa: E402  (benchmarks are scripts: their folder is not a package)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def request(port: int, raw: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes on a fresh connection; the answer up to the server closing or the first full one."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _expected(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return len(data) + 1


def get(port: int, path: str = "/api/health") -> bytes:
    return request(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())


def post_file(port: int, data: bytes, name: str = "a.png") -> bytes:
    b = "xyzboundary"
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={b}\r\nContent-Length: {len(body)}\r\n\r\n")
    return request(port, head.encode() + body, timeout=120)


class Server:
    def __init__(self, model: Path, log: Path, **settings):
        self.port, self.log = free_port(), log
        code = (f"from digitlab.serve.app import run; run({str(model)!r}, port={self.port}, "
                + ", ".join(f"{k}={v!r}" for k, v in settings.items()) + ")")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                     stderr=open(log, "wb"), env={**os.environ, "PYTHONUNBUFFERED": "1"})
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if get(self.port).startswith(b"HTTP/1.1 200"):
                    return
            except OSError:
                time.sleep(0.2)
            assert self.proc.poll() is None, log.read_text()
        raise AssertionError(f"server did not start:\n{log.read_text()}")

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def quick(trained_model_path, tmp_path_factory):
    """A server with 1-second header and body time limits."""
    server = Server(trained_model_path, tmp_path_factory.mktemp("serve") / "quick.log", header_timeout=1.0,
                    body_timeout=1.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(trained_model_path, tmp_path_factory):
    """A server with the default settings."""
    server = Server(trained_model_path, tmp_path_factory.mktemp("serve") / "default.log")
    yield server
    server.stop()


def test_oversized_headers_get_431(quick):
    fine = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nCookie: " + b"a" * 20_000 + b"\r\n\r\n"
    assert request(quick.port, fine).startswith(b"HTTP/1.1 200")  # a heavy but honest head
    head = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    try:
        answer = request(quick.port, head)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    except ConnectionResetError:  # the server may close before reading all of it: refused either way
        pass
    many = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(3000)) + b"\r\n"
    try:
        assert request(quick.port, many).startswith(b"HTTP/1.1 431")
    except ConnectionResetError:
        pass
    assert get(quick.port).startswith(b"HTTP/1.1 200")


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the server closes s (recv gives EOF or a reset, after any answer) within seconds."""
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_half_sent_connections_are_closed(quick):
    def opened(first: bytes) -> socket.socket:
        s = socket.create_connection((HOST, quick.port))
        if first:
            s.sendall(first)
        return s

    health = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    kept = opened(health)
    assert kept.recv(4096).startswith(b"HTTP/1.1 200")  # answered, then idle on keep-alive
    sockets = {"nothing sent": opened(b""), "half a request line": opened(b"GET /api/hea"),
               "half the headers": opened(b"GET /api/health HTTP/1.1\r\nHost: local"), "idle keep-alive": kept}
    start = time.monotonic()
    for what, s in sockets.items():
        assert _closed_within(s, 5.0), f"{what}: still open after {time.monotonic() - start:.1f} s"
        s.close()


def test_half_sent_body_gets_408(quick):
    with socket.create_connection((HOST, quick.port), timeout=10) as s:
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"pixels\": [[0, 0")
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in answer


def test_client_gone_mid_body_logs_no_traceback(quick):
    for _ in range(3):
        with socket.create_connection((HOST, quick.port)) as s:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"pixels\": [[0, 0")
            time.sleep(0.1)
    time.sleep(0.5)
    assert get(quick.port).startswith(b"HTTP/1.1 200")
    log = quick.log.read_text()
    assert "Traceback" not in log and "Error" not in log, log


def _peak_rss(procs: list[psutil.Process]) -> int:
    """The largest peak resident set (VmHWM) among procs, in bytes."""
    peaks = []
    for p in procs:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) * 1024)
    return max(peaks)


@pytest.mark.slow
def test_no_request_raises_rss_by_300_mb(server):
    """A 240 KB PNG declaring 7000x7000 RGBA pixels (196 MB decoded, gigabytes prepared), three at once,
    then pictures at the request pixel cap (12 MP RGBA, 53 KB each), three at once: the worker's peak RSS
    stays within 300 MB of what it held before."""
    workers = server.workers()
    assert workers, "no worker process"
    assert post_file(server.port, _png(Image.new("L", (280, 280), 255))).startswith(b"HTTP/1.1 200")
    base = max(p.memory_info().rss for p in workers)
    huge = huge_rgba_png(7000)
    assert len(huge) < 250_000
    at_cap = _png(Image.new("RGBA", (4000, 3000), (0, 0, 0, 0)), draw=True)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda d: post_file(server.port, d), [huge] * 3))
        assert all(a.startswith(b"HTTP/1.1 422") and b"7000x7000" in a for a in answers), answers[0][:300]
        answers = list(pool.map(lambda d: post_file(server.port, d), [at_cap] * 3))
        assert all(a.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")) for a in answers), answers[0][:300]
    growth = _peak_rss(workers) - base
    assert growth < 300 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB"


def _png(im: Image.Image, draw: bool = False) -> bytes:
    if draw:
        ImageDraw.Draw(im).line([(im.width // 2, im.height // 8), (im.width // 2, im.height * 7 // 8)],
                                fill=(0, 0, 0, 255), width=im.width // 20)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


async def _keep_busy(port: int, connections: int, raw: bytes, stop: threading.Event, opened: threading.Event,
                     statuses: list[bytes]) -> None:
    """connections kept-alive connections, each sending raw again as soon as its answer is in (so each has
    a request in flight all the time) until stop."""
    ready = 0

    async def one() -> None:
        nonlocal ready
        reader, writer = await asyncio.open_connection(HOST, port)
        ready += 1
        if ready == connections:
            opened.set()
        try:
            while not stop.is_set():
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                await reader.readexactly(length)
                statuses.append(head[:12])
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


@pytest.mark.slow
def test_health_answers_under_siege(server):
    """Issue 13's target: 1,000 idle connections and 200 busy ones (each with a prediction request in
    flight, back to back; decodes wait for a slot or get 503), plus 200 more mid-way through sending a
    request: /api/health, asked every 50 ms on a fresh connection, still answers, within 2 s even on a loaded
    machine (without a raised connection limit the first answer waited ~10 s for idle sockets to time out)."""
    idle = [socket.create_connection((HOST, server.port)) for _ in range(1000)]
    idle_since = time.monotonic()
    half = []
    for _ in range(200):
        s = socket.create_connection((HOST, server.port))
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n{\"pixels\": [[0, 0")
        half.append(s)
    body = json.dumps({"pixels": [[(r * c) % 256 for c in range(28)] for r in range(28)]}).encode()
    predict = (b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    stop, opened, statuses = threading.Event(), threading.Event(), []
    busy = threading.Thread(target=asyncio.run, args=(_keep_busy(server.port, 200, predict, stop, opened, statuses),))
    times = []
    try:
        busy.start()
        assert opened.wait(30), "the 200 busy connections did not open"
        time.sleep(0.5)
        assert still_open(idle) == len(idle), "idle connections closed before the probes began"
        for _ in range(40):
            t = time.perf_counter()
            assert get(server.port).startswith(b"HTTP/1.1 200")
            times.append(time.perf_counter() - t)
            time.sleep(0.05)
        still_busy = len(statuses)
        time.sleep(0.2)
        assert len(statuses) > still_busy, "the busy connections stopped being answered"
        if time.monotonic() - idle_since < HEADER_TIMEOUT_S - 1:  # (on a loaded machine the probes take longer)
            assert still_open(idle) == len(idle), "idle connections closed before the probes ended"
    finally:
        stop.set()
        busy.join(60)
        for s in idle + half:
            s.close()
    assert statuses and set(statuses) <= {b"HTTP/1.1 200", b"HTTP/1.1 503"}, set(statuses)
    answered = statuses.count(b"HTTP/1.1 200")
    assert answered >= 200, f"{answered} predictions answered 200 of {len(statuses)}"
    times.sort()
    # Not starved (before: the first answer waited ~10 s for idle sockets to time out). The 100 ms target is
    # a speed goal, measured by benchmarks/siege.py on a quiet machine, not asserted by a timed test.
    assert times[-1] < 2.0, (f"/api/health: slowest {times[-1] * 1000:.0f} ms, median "
                             f"{times[len(times) // 2] * 1000:.0f} ms; {answered} predictions answered 200, "
                             f"{len(statuses) - answered} 503")
