"""How long the one road takes: decode + prepare() for a 280x280 canvas PNG (and each half alone, and a
280x280 uint8 array as JSON pixels arrive), a 12 MP and a 48 MP JPEG, median of repeated runs in this
process; and the peak RSS of decoding+preparing each photo in a fresh process (its own high-water mark,
VmHWM: getrusage's ru_maxrss in a child starts from this parent's peak, which held the 48 MP picture).

    python benchmarks/prepare.py [--runs 50]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

from digitlab.images import decode  # noqa: E402
from digitlab.prepare import prepare  # noqa: E402


def canvas_png() -> bytes:
    im = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    ImageDraw.Draw(im).line([(90, 60), (190, 60), (120, 230)], fill=(0, 0, 0, 255), width=18)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def photo_jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    page = np.clip(200 + rng.normal(0, 12, (height // 8, width // 8)), 0, 255).astype(np.uint8)
    im = Image.fromarray(page).resize((width, height), Image.BILINEAR).convert("RGB")
    ImageDraw.Draw(im).line([(width // 2, height // 4), (width // 2, 3 * height // 4)], fill=(30, 30, 40),
                            width=width // 60)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


PEAK = """
import resource, sys
from digitlab.images import decode
from digitlab.prepare import prepare
p = prepare(decode(sys.argv[1]))
try:  # this process's own high-water mark (Linux)
    print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024)
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def child_peak_mb(*args: str, code: str = PEAK) -> float:
    """The peak RSS in MB of code run in a fresh interpreter with args (PEAK: decode + prepare the file)."""
    return float(subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                                check=True).stdout)


def median_ms(f, runs: int) -> float:
    f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    print(machine_line())
    print(f"{'input':<28}{'median ms':>10}{'peak RSS MB':>13}")
    png = canvas_png()
    grey = decode(png)
    pixels = (grey * 255).round().astype(np.uint8)
    print(f"{'280x280 canvas PNG':<28}{median_ms(lambda: prepare(decode(png)), args.runs):>10.2f}{'':>13}")
    print(f"{'  decode alone':<28}{median_ms(lambda: decode(png), args.runs):>10.2f}{'':>13}")
    print(f"{'  prepare alone':<28}{median_ms(lambda: prepare(grey), args.runs):>10.2f}{'':>13}")
    print(f"{'280x280 uint8 array':<28}{median_ms(lambda: prepare(pixels), args.runs):>10.2f}{'':>13}")
    base = child_peak_mb("x", code=PEAK.replace("p = prepare(decode(sys.argv[1]))", ""))
    for name, (w, h) in [("12 MP JPEG (4000x3000)", (4000, 3000)), ("48 MP JPEG (8000x6000)", (8000, 6000))]:
        data = photo_jpeg(w, h)
        with tempfile.NamedTemporaryFile(suffix=".jpg") as f:
            f.write(data)
            f.flush()
            ms = median_ms(lambda: prepare(decode(f.name)), max(3, args.runs // 10))
            peak = child_peak_mb(f.name)
        print(f"{name:<28}{ms:>10.1f}{peak:>13.0f}")
    print(f"(peak RSS of a bare interpreter with digitlab's decoding imported: {base:.0f} MB)")


if __name__ == "__main__":
    main()
