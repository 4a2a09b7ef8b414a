"""Load test of the real server on loopback: a bounded number of requests from many concurrent clients.

    python benchmarks/load.py MODEL.safetensors --requests 5000 --concurrency 32

Starts `digitlab serve` on 127.0.0.1 (a free port), sends --requests POST /api/predict requests (half
uploads of a PNG, half JSON pixels) from --concurrency clients, and prints requests/s, p50/p99 latency
and the error count (non-200 answers or failed connections). Stops the server at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import subprocess
import sys
import time

import httpx
from _machine import machine_line
from PIL import Image

from digitlab.data import load_mnist
from digitlab.errors import DigitlabError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(host: str, port: int, requests: list[bytes], jobs: list[int], lat: list[float],
                 errors: list[str]) -> None:
    """One keep-alive HTTP/1.1 connection sending pre-built requests. Hand-rolled on asyncio streams:
    a full HTTP client library spends more CPU per request than the server does, on the same 2 cores."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while jobs:
            i = jobs.pop()
            t = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                await writer.drain()
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                status = int(status_line.split()[1])
                if status != 200:
                    errors.append(f"HTTP {status}")
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                errors.append(repr(e))
                return
            lat.append(1000 * (time.perf_counter() - t))
    finally:
        writer.close()


def build_requests(host: str, port: int, png: bytes, pixels: list) -> list[bytes]:
    """A JSON-pixels request and a multipart image upload, as raw bytes."""
    body_json = json.dumps({"pixels": pixels}).encode()
    boundary = "digitlabbench"
    body_png = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    head = f"POST /api/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
    return [(head + f"Content-Type: application/json\r\nContent-Length: {len(body_json)}\r\n\r\n").encode()
            + body_json,
            (head + f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
             f"Content-Length: {len(body_png)}\r\n\r\n").encode() + body_png]


async def load(host: str, port: int, n: int, concurrency: int, requests: list[bytes]) -> tuple[float, list, list]:
    jobs = list(range(n))
    lat: list[float] = []
    errors: list[str] = []
    t = time.perf_counter()
    await asyncio.gather(*(client(host, port, requests, jobs, lat, errors) for _ in range(concurrency)))
    return time.perf_counter() - t, sorted(lat), errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    data = load_mnist()
    buf = io.BytesIO()
    Image.fromarray(255 - data.test_images[0]).resize((280, 280)).save(buf, "PNG")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", args.model, "--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(base + "/api/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        requests = build_requests("127.0.0.1", port, buf.getvalue(), data.test_images[0].tolist())
        seconds, lat, errors = asyncio.run(load("127.0.0.1", port, args.requests, args.concurrency, requests))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(machine_line("uvicorn", "fastapi"))
    print(f"{len(lat) + len(errors)} requests (half PNG uploads, half JSON pixels), {args.concurrency} concurrent "
          f"clients, {seconds:.1f} s")
    print("| requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|")
    print(f"| {len(lat) / seconds:,.0f} | {lat[len(lat) // 2]:.1f} | {lat[int(0.99 * len(lat))]:.1f} "
          f"| {len(errors)} |")
    if errors or len(lat) != args.requests:
        print("first errors:", errors[:5])
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data: the message, not a traceback
        raise SystemExit(f"load.py: {e}") from None
