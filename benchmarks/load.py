"""Load test of the real server on loopback with wrk (a Python client cannot make this load on 2 cores).

    python benchmarks/load.py MODEL.safetensors [--connections 32] [--seconds 10] [--workers 1]

Starts `digitlab serve` on 127.0.0.1 (a free port), then runs wrk (Debian package `wrk`) twice, each with a
Lua script that posts the same request over and over: a 280x280 canvas PNG upload (multipart field "file",
a test digit drawn dark on white) and JSON pixels ({"pixels": 28 rows}). Prints the machine (CPU model, ISA
flags, cores), then requests/s, p50/p99 latency, non-2xx answers and the server's CPU time per request (its
processes' user + system time over the run / requests answered: on a shared machine this moves far less
than requests/s, and cores / it bounds the requests/s one machine can give); exits 1 on any non-2xx or
socket error. Stops the server at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _machine import machine_line
from PIL import Image

from digitlab.data import load_mnist
from digitlab.errors import DigitlabError

# Each script's done() prints one JSON line: wrk's own counters and its latency histogram (microseconds).
DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %.3f, "p50_us": %d, "p99_us": %d, "non2xx": %d, '
    .. '"socket_errors": %d}\n', summary.requests, summary.duration / 1e6, latency:percentile(50),
    latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""
PNG_LUA = r"""
local f = assert(io.open("digit.png", "rb")); local png = f:read("*a"); f:close()
local b = "----wrkboundary7d1f"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. b
wrk.body = "--" .. b .. "\r\n" .. 'Content-Disposition: form-data; name="file"; filename="digit.png"\r\n' ..
  "Content-Type: image/png\r\n\r\n" .. png .. "\r\n--" .. b .. "--\r\n"
""" + DONE
JSON_LUA = r"""
local f = assert(io.open("digit.json", "rb")); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
""" + DONE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(base + "/api/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server at {base} did not answer within {seconds} s")


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by the server process and its workers."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_wrk(wrk: str, script: str, workdir: Path, url: str, connections: int, seconds: int) -> dict:
    (workdir / "script.lua").write_text(script)
    threads = min(connections, max(1, (os.cpu_count() or 2) // 2))
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", "script.lua", url],
                         cwd=workdir, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    return wrk_summary(out)


def wrk_summary(out: str) -> dict:
    """The JSON line that PNG_LUA/JSON_LUA's done() hook prints among wrk's own output."""
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def find_wrk() -> str:
    """wrk's path, or exit with the package to install."""
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk not found: install the Debian package `wrk`")
    return wrk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data-dir", help="MNIST folder (default: $DIGITLAB_DATA_DIR, then the cache)")
    args = ap.parse_args()
    wrk = find_wrk()
    digit = load_mnist(args.data_dir).test_images[0]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "digitlab", "serve", args.model, "--port", str(port),
                               "--workers", str(args.workers)], stdout=subprocess.DEVNULL)
    results = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            buf = io.BytesIO()
            Image.fromarray(255 - digit).resize((280, 280), Image.BILINEAR).save(buf, "PNG")
            (work / "digit.png").write_bytes(buf.getvalue())
            (work / "digit.json").write_text(json.dumps({"pixels": digit.tolist()}))
            for name, script in (("canvas PNG upload (280x280)", PNG_LUA), ("JSON pixels (28x28)", JSON_LUA)):
                cpu = server_cpu_s(server.pid)
                results[name] = run_wrk(wrk, script, work, base + "/api/predict", args.connections, args.seconds)
                results[name]["server_cpu_s"] = server_cpu_s(server.pid) - cpu
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(machine_line("granian", "onnxruntime"))
    print(f"wrk, {args.connections} connections, {args.seconds} s each, {args.workers} worker(s), 127.0.0.1\n")
    print("| request | requests/s | p50 ms | p99 ms | non-2xx | socket errors | server CPU ms/request |\n"
          "|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['requests'] / r['seconds']:,.0f} | {r['p50_us'] / 1000:.1f} | {r['p99_us'] / 1000:.1f} "
              f"| {r['non2xx']} | {r['socket_errors']} | {1000 * r['server_cpu_s'] / max(1, r['requests']):.2f} |")
    if any(r["non2xx"] or r["socket_errors"] for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data, a bad model file: the message, not a traceback
        raise SystemExit(f"load.py: {e}") from None
