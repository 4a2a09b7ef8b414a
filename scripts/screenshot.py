"""Regenerate docs/page.png: the drawing page in Debian's Chromium, driven the way tests/test_browser.py
drives it (same server start, same browser, the same 7 drawn with real mouse events), taken once the
probability bars have stopped moving.

    python scripts/screenshot.py MODEL [--out docs/page.png]

The README says which model the picture shows; use that one (e.g. `digitlab train --recipe fast`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_browser import SEVEN, draw, launch, serving, settle, shown_digit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="the model the page serves")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "page.png")
    args = ap.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"screenshot.py: {args.model}: no such model file")
    from playwright.sync_api import sync_playwright

    with serving(args.model) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 800, "height": 500})
        page.goto(url)
        draw(page, SEVEN)
        shown_digit(page, "7")
        settle(page)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
