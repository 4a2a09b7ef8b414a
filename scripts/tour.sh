#!/usr/bin/env bash
# The README's "Quick tour", command for command and in its order, in a fresh temporary folder, as a
# newcomer runs it after the two set-up commands (scripts/setup.sh made .venv; this activates it).
# Each command is echoed as the README writes it ("$ digitlab ..."); tests/test_tour.py compares these
# lines with the README, so the two cannot drift apart.
#
#   bash scripts/tour.sh                  # the whole tour: the tutorial's 5 epochs, then `fast`'s 1
#   TOUR_QUICK=1 bash scripts/tour.sh     # the same commands; the two trainings get --epochs 1 --limit 2000 --test-limit 1000
#
# MNIST comes from $DIGITLAB_DATA_DIR (default: ../shared/mnist beside the checkout, as scripts/test.sh).
# `digitlab serve` is started in the background, asked for its page and /docs, and stopped;
# TOUR_PORT (default 8000, the README's) adds --port when that port is taken. TOUR_KEEP=DIR keeps the
# folder's files (models, plots, seven.png) in DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${DIGITLAB_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/mnist" ]; then
  DIGITLAB_DATA_DIR="$(cd "$ROOT/../shared/mnist" && pwd)"
fi
if [ -n "${DIGITLAB_DATA_DIR:-}" ]; then
  export DIGITLAB_DATA_DIR
else
  echo "tour.sh: no DIGITLAB_DATA_DIR: digitlab looks in its cache, then downloads MNIST" >&2
fi
# shellcheck disable=SC1091
. "$ROOT/.venv/bin/activate"      # the README: ". .venv/bin/activate", then plain `digitlab`

QUICK=()
if [ "${TOUR_QUICK:-0}" = 1 ]; then
  QUICK=(--epochs 1 --limit 2000 --test-limit 1000)  # trainings only: a smoke test of the tour, not its accuracy
fi
PORT="${TOUR_PORT:-8000}"
WORK="$(mktemp -d)"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [ -n "${TOUR_KEEP:-}" ]; then mkdir -p "$TOUR_KEEP" && cp -r "$WORK"/. "$TOUR_KEEP"/; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

say() { echo "\$ digitlab $*"; }    # the command exactly as the README writes it

say summary;                                      digitlab summary
say train --out model.safetensors;                digitlab train --out model.safetensors "${QUICK[@]}"
say recipes;                                      digitlab recipes
say train --recipe fast --out fast.safetensors;   digitlab train --recipe fast --out fast.safetensors "${QUICK[@]}"
say evaluate model.safetensors --plots plots/;    digitlab evaluate model.safetensors --plots plots/
say show --index 0;                               digitlab show --index 0
say show --index 0 --out seven.png;               digitlab show --index 0 --out seven.png
say predict model.safetensors seven.png --index 1; digitlab predict model.safetensors seven.png --index 1

say serve model.safetensors
if [ "$PORT" = 8000 ]; then digitlab serve model.safetensors & else digitlab serve model.safetensors --port "$PORT" & fi
SERVER=$!
# Wait for this server (not another one on the port: its process must still be running), then fetch the
# page and the API docs as a browser would (stdlib only: no curl).
python - "$PORT" "$SERVER" <<'EOF'
import os, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(300):
    if not os.path.exists(f"/proc/{sys.argv[2]}"):
        sys.exit(f"tour.sh: digitlab serve stopped (is port {sys.argv[1]} taken? set TOUR_PORT)")
    try:
        urllib.request.urlopen(base + "/api/health", timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"tour.sh: the server did not answer on {base}")
for path in ("/", "/docs"):
    with urllib.request.urlopen(base + path, timeout=5) as r:
        print(f"GET {path}: {r.status}")
EOF
kill -0 "$SERVER"  # still ours
echo "the tour ran to the end"
