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
import socket
import subprocess
import sys
import time

import httpx
from PIL import Image

from digitlab.data import load_mnist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def client(http: httpx.AsyncClient, url: str, jobs: asyncio.Queue, lat: list[float], errors: list[str],
                 png: bytes, pixels: list) -> None:
    while True:
        try:
            i = jobs.get_nowait()
        except asyncio.QueueEmpty:
            return
        t = time.perf_counter()
        try:
            if i % 2:
                r = await http.post(url, files={"file": ("d.png", png, "image/png")})
            else:
                r = await http.post(url, json={"pixels": pixels})
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}")
        except httpx.HTTPError as e:
            errors.append(repr(e))
        lat.append(1000 * (time.perf_counter() - t))


async def load(url: str, n: int, concurrency: int, png: bytes, pixels: list) -> tuple[float, list, list]:
    jobs: asyncio.Queue = asyncio.Queue()
    for i in range(n):
        jobs.put_nowait(i)
    lat: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(http, url, jobs, lat, errors, png, pixels) for _ in range(concurrency)))
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
        seconds, lat, errors = asyncio.run(load(base + "/api/predict", args.requests, args.concurrency,
                                                buf.getvalue(), data.test_images[0].tolist()))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, {seconds:.1f} s")
    print("| requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|")
    print(f"| {args.requests / seconds:,.0f} | {lat[len(lat) // 2]:.1f} | {lat[int(0.99 * len(lat))]:.1f} "
          f"| {len(errors)} |")
    if errors:
        print("first errors:", errors[:5])
        sys.exit(1)


if __name__ == "__main__":
    main()
