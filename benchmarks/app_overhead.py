"""What one request costs inside the app, without a server or a network: the ASGI app called directly,
one request after another (or --concurrent N at once, as N connections send them: the server batches
their model calls), for a 280x280 canvas PNG upload and JSON pixels (28x28), as benchmarks/load.py sends
them. Prints the median and fastest wall time and the median CPU time per request; CPU time and the
fastest run move less than wall time when other work shares the machine.

    python benchmarks/app_overhead.py MODEL.safetensors [--n 300] [--concurrent 32]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

from digitlab.data import load_mnist  # noqa: E402
from digitlab.errors import DigitlabError  # noqa: E402
from digitlab.serve.app import create_app  # noqa: E402

BOUNDARY = "----wrkboundary7d1f"


def requests(digit: np.ndarray) -> dict[str, tuple[bytes, bytes]]:
    """name -> (body, content type), the bodies of load.py's wrk scripts."""
    buf = io.BytesIO()
    Image.fromarray(255 - digit).resize((280, 280), Image.BILINEAR).save(buf, "PNG")
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="digit.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    multipart = head + buf.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()
    return {"canvas PNG upload (280x280)": (multipart, f"multipart/form-data; boundary={BOUNDARY}".encode()),
            "JSON pixels (28x28)": (json.dumps({"pixels": digit.tolist()}).encode(), b"application/json")}


async def call(app, body: bytes, ctype: bytes) -> int:
    """One POST /api/predict through the ASGI app; its status code."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", ctype),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def measure(app, body: bytes, ctype: bytes, n: int, concurrent: int = 1) -> tuple[float, float, float]:
    """(median wall ms, fastest wall ms, median CPU ms) per request over n rounds after 20 warm-up ones;
    each round is `concurrent` requests at once (as many connections would send them), its times divided
    by that number."""
    for _ in range(20):
        if set(await asyncio.gather(*(call(app, body, ctype) for _ in range(concurrent)))) != {200}:
            raise SystemExit("app_overhead.py: the app did not answer 200")
    wall, cpu = [], []
    for _ in range(n):
        c, w = time.process_time(), time.perf_counter()
        await asyncio.gather(*(call(app, body, ctype) for _ in range(concurrent)))
        wall.append((time.perf_counter() - w) / concurrent)
        cpu.append((time.process_time() - c) / concurrent)
    return 1000 * float(np.median(wall)), 1000 * min(wall), 1000 * float(np.median(cpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--concurrent", type=int, default=1,
                    help="requests sent at once in each round (the server batches their model calls)")
    ap.add_argument("--data-dir", help="MNIST folder (default: $DIGITLAB_DATA_DIR, then the cache)")
    args = ap.parse_args()
    app = create_app(args.model)
    digit = load_mnist(args.data_dir).test_images[0]
    print(machine_line())
    print(f"{args.concurrent} request(s) at once; times per request")
    print("| request | median ms | fastest ms | CPU ms (median) |\n|---|---|---|---|")
    for name, (body, ctype) in requests(digit).items():
        med, fastest, cpu = asyncio.run(measure(app, body, ctype, args.n, args.concurrent))
        print(f"| {name} | {med:.2f} | {fastest:.2f} | {cpu:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data, a bad model file: the message, not a traceback
        raise SystemExit(f"app_overhead.py: {e}") from None
