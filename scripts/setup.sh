#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages (when run as root), a virtual environment in
# .venv with digitlab and everything its tests need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # chromium: the browser test drives Debian's Chromium (Playwright must not download one).
  # dataset-fashion-mnist: the --dataset fashion-mnist files, offline, and negatives for abstention.
  need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  # wrk: the server load benchmark; tesseract-ocr: the peer OCR in benchmarks/numbers.py.
  command -v wrk >/dev/null || need+=(wrk)
  command -v tesseract >/dev/null || need+=(tesseract-ocr)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch==2.13.0 is pinned in pyproject.toml: the CPU wheel these machines carry on local disk.
.venv/bin/python -m pip install -q -e ".[dev]"
echo "digitlab is installed in .venv:"
.venv/bin/digitlab --version
