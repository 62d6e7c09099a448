#!/usr/bin/env bash
# scripts/setup.sh [--test]: install everything cmim needs on a fresh Debian/Ubuntu machine.
#   - a virtual environment in .venv with the pinned packages (pyproject.toml), cmim editable;
#   - the demo data: Fashion-MNIST from the Debian package dataset-fashion-mnist, installed
#     system-wide when root, else unpacked from the .deb into data/fashion-mnist (no root needed).
# --test also installs the test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
EXTRAS=""
[ "${1:-}" = "--test" ] && EXTRAS="[test]"

log() { printf '[setup] %s\n' "$*"; }

# ---- Python environment
if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
log "installing pinned packages (first time: a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e ".${EXTRAS}"

# ---- demo data: Fashion-MNIST from Debian
FMNIST_SYS=/usr/share/datasets/fashion-mnist
FMNIST_LOCAL=data/fashion-mnist/usr/share/datasets/fashion-mnist
if [ -f "$FMNIST_SYS/train-images-idx3-ubyte.gz" ] || [ -f "$FMNIST_LOCAL/train-images-idx3-ubyte.gz" ] \
   || [ -f "${CMIM_FASHION_MNIST:-/nonexistent}/train-images-idx3-ubyte.gz" ]; then
    log "Fashion-MNIST present"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian package dataset-fashion-mnist"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    log "not root: unpacking dataset-fashion-mnist into data/fashion-mnist"
    mkdir -p data/fashion-mnist && tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null)
    dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb data/fashion-mnist
    rm -rf "$tmp"
else
    echo "[setup] ERROR: Fashion-MNIST not found and no apt-get to fetch it. Put the four IDX .gz files in" \
         "$FMNIST_LOCAL (or set CMIM_FASHION_MNIST to their folder)." >&2
    exit 1
fi
.venv/bin/python -c "from cmim.data import fashion_mnist as f; print('[setup] Fashion-MNIST at', f.find_root())"

# ---- --test: headless Chromium from Debian for the report's browser test (tests/report/test_report_workflow.py)
if [ -n "$EXTRAS" ]; then
    if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
        log "chromium present"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing Debian package chromium (headless browser for the report test)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
            >/dev/null || log "could not install chromium; the report's browser test will skip"
    else
        log "no root or no apt-get: chromium not installed; the report's browser test will skip"
    fi
fi
log "done: activate with 'source .venv/bin/activate'"
