"""Accuracy on MNIST test digits (indices 5000-9999) rendered under the conditions people's pictures
come in (digitlab.synth.CONDITIONS), through each door: a file (encoded and decoded), the Python API
(an array), and the server's JSON pixels.

    python benchmarks/conditions.py MODEL [--n 500] [--doors file array json]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

import digitlab  # noqa: E402
from digitlab.data import load_mnist  # noqa: E402
from digitlab.errors import DigitlabError  # noqa: E402
from digitlab.images import decode  # noqa: E402
from digitlab.prepare import prepare  # noqa: E402
from digitlab.synth import CONDITIONS  # noqa: E402


def as_file(picture) -> bytes:
    if isinstance(picture, bytes):
        return picture
    buf = io.BytesIO()
    Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def door_file(model, pictures) -> np.ndarray:
    x = np.stack([prepare(decode(as_file(p), name="picture")).image for p in pictures])
    return model.predict(x).argmax(1)


def door_array(model, pictures) -> np.ndarray | None:
    if any(isinstance(p, bytes) for p in pictures):
        return None  # an encoded file has no array form
    return model.predict(list(pictures)).argmax(1)


def door_json(client, pictures) -> np.ndarray | None:
    if any(isinstance(p, bytes) for p in pictures):
        return None
    out = []
    for p in pictures:
        body = {"pixels": np.round(p * 255).astype(int).tolist(), "range": "0-255"}
        r = client.post("/api/predict", json=body)
        rec = r.json()
        out.append(rec["digit"] if r.status_code == 200 and rec.get("digit") is not None else -1)
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=500, help="digits per condition, from test index 5000 on")
    ap.add_argument("--doors", nargs="+", default=["file", "array", "json"], choices=["file", "array", "json"])
    ap.add_argument("--only", nargs="*", help="conditions to run (default: all)")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    model = digitlab.load(args.model)
    data = load_mnist(args.data_dir)  # --data-dir, else $DIGITLAB_DATA_DIR, else the cache
    digits, labels = data.test_images[5000:5000 + args.n], data.test_labels[5000:5000 + args.n]
    client = None
    if "json" in args.doors:
        from fastapi.testclient import TestClient

        from digitlab.serve.app import create_app

        client = TestClient(create_app(model))
    print(machine_line())
    print(f"model: {args.model}   digits: test[5000:{5000 + args.n}]")
    print(f"{'condition':<26}" + "".join(f"{d:>9}" for d in args.doors) + "   s")
    for name, make in CONDITIONS.items():
        if args.only and name not in args.only:
            continue
        rng = np.random.default_rng(0)
        pictures = [make(d, rng) for d in digits]
        t = time.perf_counter()
        cells = []
        doors = {"file": lambda p: door_file(model, p), "array": lambda p: door_array(model, p),
                 "json": lambda p: door_json(client, p)}
        for door in args.doors:
            pred = doors[door](pictures)
            cells.append("      n/a" if pred is None else f"{100 * (pred == labels).mean():8.1f}%")
        print(f"{name:<26}" + "".join(cells) + f"  {time.perf_counter() - t:4.1f}")


if __name__ == "__main__":
    try:
        main()
    except DigitlabError as e:  # no data, a bad model file: the message, not a traceback
        raise SystemExit(f"conditions.py: {e}") from None
