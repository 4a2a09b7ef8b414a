"""/api/health under siege, the target of issue 13: with 200 busy and 1,000 idle connections open, the
real server on loopback still answers /api/health within 100 ms.

    python benchmarks/siege.py MODEL.safetensors [--idle 1000] [--busy 200] [--seconds 6] [--workers 1]

Starts `digitlab serve` on 127.0.0.1 (a free port) and opens --idle connections that send nothing. Then wrk
(Debian package `wrk`) keeps --busy connections posting a 280x280 canvas PNG to /api/predict back to back
(each has a request in flight all the time) for --seconds, while this script asks GET /api/health every
100 ms, each on a fresh connection, timing connect to last byte. The window stays under the server's
header timeout (10 s), after which idle connections are closed: the script checks at the end that they
were still open. Prints the machine, the /api/health latencies (p50, p99, max) and wrk's requests/s,
p50/p99 and non-2xx answers (503s are the decode queue's backpressure, not failures); exits 1 if any
/api/health answer was not 200 or took 100 ms or more.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine_line
from load import PNG_LUA, find_wrk, free_port, wait_healthy, wrk_summary
from PIL import Image

from digitlab.data import load_mnist
from digitlab.errors import DigitlabError
from digitlab.serve import HEADER_TIMEOUT_S

HOST = "127.0.0.1"
TARGET_S = 0.1


def health(port: int) -> tuple[bool, float]:
    """(answered 200, seconds from connect to the whole answer) for one GET /api/health."""
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.startswith(b"HTTP/1.1 200"), time.perf_counter() - start


def still_open(sockets: list[socket.socket]) -> int:
    """How many of sockets the server has not closed (a non-blocking read finds no EOF)."""
    n = 0
    for s in sockets:
        s.setblocking(False)
        try:
            n += s.recv(1) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def siege(port: int, wrk: str, workdir: Path, idle: int, busy: int, seconds: float) -> dict:
    """Idle sockets, wrk's busy ones, and /api/health timed every 100 ms meanwhile."""
    sockets = [socket.create_connection((HOST, port)) for _ in range(idle)]
    opened = time.monotonic()
    (workdir / "script.lua").write_text(PNG_LUA)
    load = subprocess.Popen([wrk, "-t1", f"-c{busy}", f"-d{seconds:g}s", "-s", "script.lua",
                             f"http://{HOST}:{port}/api/predict"], cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # wrk's connections opened and busy
        times, failed = [], 0
        while load.poll() is None and time.monotonic() - opened < HEADER_TIMEOUT_S - 1:
            ok, took = health(port)
            times.append(took)
            failed += not ok
            time.sleep(0.1)
        left_open = still_open(sockets)
        out, _ = load.communicate(timeout=seconds + 60)
    finally:
        if load.poll() is None:
            load.kill()
        for s in sockets:
            s.close()
    return {"health": sorted(times), "failed": failed, "idle_open": left_open,
            "wrk": wrk_summary(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--busy", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data-dir", help="MNIST folder (default: $DIGITLAB_DATA_DIR, then the cache)")
    args = ap.parse_args()
    wrk = find_wrk()
    if args.seconds > HEADER_TIMEOUT_S - 2:
        raise SystemExit(f"--seconds: at most {HEADER_TIMEOUT_S - 2:g} (idle connections close after "
                         f"{HEADER_TIMEOUT_S} s)")
    digit = load_mnist(args.data_dir).test_images[0]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", args.model, "--port", str(port),
                               "--workers", str(args.workers)], stdout=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://{HOST}:{port}")
        with tempfile.TemporaryDirectory() as tmp:
            buf = io.BytesIO()
            Image.fromarray(255 - digit).resize((280, 280), Image.BILINEAR).save(buf, "PNG")
            (Path(tmp) / "digit.png").write_bytes(buf.getvalue())
            r = siege(port, wrk, Path(tmp), args.idle, args.busy, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=20)
    times, w = r["health"], r["wrk"]
    print(machine_line("granian"))
    print(f"{args.idle} idle connections ({r['idle_open']} still open at the end), {args.busy} busy (wrk, 280x280 "
          f"PNG to /api/predict), {args.seconds:g} s, {args.workers} worker(s), 127.0.0.1\n")
    print("| /api/health answers | p50 ms | p99 ms | max ms | not 200 | predictions/s | predict p50 ms | "
          "predict p99 ms | predict non-2xx |\n|---|---|---|---|---|---|---|---|---|")
    print(f"| {len(times)} | {times[len(times) // 2] * 1000:.1f} | {times[int(len(times) * 0.99)] * 1000:.1f} | "
          f"{times[-1] * 1000:.1f} | {r['failed']} | {w['requests'] / w['seconds']:,.0f} | {w['p50_us'] / 1000:.0f} | "
          f"{w['p99_us'] / 1000:.0f} | {w['non2xx']} |")
    if r["failed"] or times[-1] >= TARGET_S or r["idle_open"] < args.idle:
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data, a bad model file: the message, not a traceback
        raise SystemExit(f"siege.py: {e}") from None
