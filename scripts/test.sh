#!/usr/bin/env bash
# The whole test suite (runs the set-up first if .venv is missing). Extra arguments go to pytest.
# The tests find MNIST through $DIGITLAB_DATA_DIR (default here: ../shared/mnist beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/digitlab ] || bash scripts/setup.sh
if [ -z "${DIGITLAB_DATA_DIR:-}" ] && [ -d ../shared/mnist ]; then
  DIGITLAB_DATA_DIR="$(cd ../shared/mnist && pwd)"
fi
export DIGITLAB_DATA_DIR
.venv/bin/ruff check digitlab tests benchmarks
exec .venv/bin/python -m pytest -ra "$@"
