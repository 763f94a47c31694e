#!/usr/bin/env bash
# kubeml as a user installs it: build the sdist and the wheel, install the wheel into a
# fresh virtual environment outside the repository with its dependencies resolved by pip,
# and use it from there: a server of its own, function create, dataset create, train,
# history, infer and the dashboard's page. A missing package file, entry point or
# dependency fails here. Run by tests/ui/test_wheel.py (CI); also by hand:
#
#   bash scripts/wheel_check.sh            # the default (process) backend
#   bash scripts/wheel_check.sh ray        # then `pip install '<wheel>[ray]'` and the ray backend
#
# WHEEL_CHECK_DIR: where the dist, the venv and the server's home go (default: a new temp
# dir, removed at the end; a given one is kept, and a venv already there is reused).
# PYTHON: the interpreter that builds (default .venv/bin/python; it needs `build` and, for
# the digits, scikit-learn: the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
BACKENDS=("${@:-process}")

if [ -n "${WHEEL_CHECK_DIR:-}" ]; then
  WORK=$(mkdir -p "$WHEEL_CHECK_DIR" && cd "$WHEEL_CHECK_DIR" && pwd)
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kubeml-wheel.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
fi
case "$WORK/" in "$REPO"/*) echo "WHEEL_CHECK_DIR must be outside the repository" >&2; exit 2 ;; esac
# Nothing of the development environment may leak into the installed kubeml.
unset PYTHONPATH VIRTUAL_ENV KUBEML_URL KUBEML_API_TOKEN KUBEML_BACKEND KUBEML_RAY_ADDRESS
export PIP_DISABLE_PIP_VERSION_CHECK=1
step() { echo "==> $*"; }

step "python -m build (sdist, then the wheel from the sdist)"
rm -rf "$WORK/dist"
"$PYTHON" -m build --outdir "$WORK/dist" "$REPO" >"$WORK/build.log" 2>&1 \
  || { tail -n 40 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/kubeml-*-py3-none-any.whl)
ls "$WORK"/dist/kubeml-*.tar.gz >/dev/null
echo "    $(basename "$WHEEL")"

VENV=$WORK/venv
if [ ! -x "$VENV/bin/kubeml" ]; then
  step "fresh venv: pip install torch==2.13.0 (CPU, pinned first), then the wheel"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEEL"  # this build, not a stale one
"$VENV/bin/pip" install -q "$WHEEL"                               # and its dependencies, for real
"$VENV/bin/pip" check
"$VENV/bin/kubeml" --version

cd "$WORK"  # outside the repository: nothing imports from the checkout
installed=$("$VENV/bin/python" -c "import kubeml; print(kubeml.__version__, kubeml.__file__)")
echo "    kubeml $installed"
case "$installed" in *"$VENV"/*) ;; *) echo "kubeml did not come from the fresh venv" >&2; exit 1 ;; esac

step "the digits dataset and a function file"
mkdir -p digits
"$PYTHON" - digits <<'EOF'
import sys
import numpy as np
from sklearn.datasets import load_digits
d = load_digits()
x, y = d.images.astype(np.uint8), d.target.astype(np.int64)
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
for name, array in {"train_x": x[300:], "train_y": y[300:], "test_x": x[:300],
                    "test_y": y[:300]}.items():
    np.save(f"{sys.argv[1]}/{name}.npy", array)
EOF
cp "$REPO/tests/functions/digits_mlp.py" mlp.py
"$VENV/bin/python" -c "
import json, numpy as np
json.dump(np.load('digits/test_x.npy')[:20].tolist(), open('samples.json', 'w'))"

kubeml() { "$VENV/bin/kubeml" "$@"; }
for backend in "${BACKENDS[@]}"; do
  if [ "$backend" = ray ]; then
    step "pip install '<wheel>[ray]'"
    "$VENV/bin/pip" install -q "$WHEEL[ray]"
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
  fi
  export KUBEML_HOME=$WORK/home-$backend KUBEML_HOST=127.0.0.1 KUBEML_CAPACITY=2
  KUBEML_PORT=$("$VENV/bin/python" -c \
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  export KUBEML_PORT
  rm -rf "$KUBEML_HOME"
  trap 'kubeml server stop >/dev/null 2>&1 || true; [ -n "${WHEEL_CHECK_DIR:-}" ] || rm -rf "$WORK"' EXIT

  step "[$backend] kubeml server start"
  kubeml server start --backend "$backend"
  kubeml server status --json | "$VENV/bin/python" -c "
import json, sys
status = json.load(sys.stdin)
assert (status['backend'], status['version']) == (sys.argv[1], sys.argv[2]), status" \
    "$backend" "${installed%% *}"
  step "[$backend] kubeml function create, dataset create"
  kubeml function create --name mlp --code mlp.py
  kubeml dataset create -n digits --traindata digits/train_x.npy --trainlabels digits/train_y.npy \
    --testdata digits/test_x.npy --testlabels digits/test_y.npy
  step "[$backend] kubeml train (N=2, 3 epochs)"
  trained=$(kubeml train -f mlp -d digits --epochs 3 --parallelism 2 --static --K 4 --lr 0.05 \
    --validate-every 1 --watch)
  task=$(head -n 1 <<<"$trained")
  step "[$backend] kubeml history get, history list"
  kubeml history get --id "$task"
  kubeml history list >/dev/null
  accuracy=$(kubeml history get --id "$task" --json | "$VENV/bin/python" -c \
    "import json, sys; print(json.load(sys.stdin)['epochs'][-1]['accuracy'])")
  "$VENV/bin/python" -c "import sys; a = float(sys.argv[1]); sys.exit(int(a < 85))" "$accuracy" \
    || { echo "accuracy $accuracy% after 3 epochs: expected at least 85%" >&2; exit 1; }
  step "[$backend] kubeml infer"
  predicted=$(kubeml infer -n "$task" --datafile samples.json)
  "$VENV/bin/python" -c "
import json, sys, numpy as np
predicted = np.asarray(json.loads(sys.argv[1]))
right = (predicted == np.load('digits/test_y.npy')[:20]).mean()
print(f'    {right:.0%} of 20 test digits right')
sys.exit(int(right < 0.75))" "$predicted"
  step "[$backend] GET /dashboard, /docs and their assets"
  "$VENV/bin/python" - "$KUBEML_PORT" <<'EOF'
import sys
import urllib.request
from pathlib import Path

import kubeml

no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
url = f"http://127.0.0.1:{sys.argv[1]}"
static = next(Path(kubeml.__file__).parent.rglob("static/dashboard.html")).parent
for page in ("/dashboard", "/docs"):
    html = no_proxy.open(url + page, timeout=10).read()
    assert b"https://" not in html, f"{page} loads something from the internet"
for asset in ("dashboard.html", "dashboard.js", "dashboard.css", "docs.html", "docs.js",
              "vendor/uplot/uPlot.iife.min.js", "vendor/uplot/LICENSE",
              "vendor/swagger-ui/swagger-ui-bundle.js", "vendor/swagger-ui/swagger-ui.css"):
    served = no_proxy.open(f"{url}/static/{asset}", timeout=10).read()
    assert served == (static / asset).read_bytes(), f"{asset} is not the wheel's file"
print(f"    /dashboard, /docs and 9 assets served from {static}")
EOF
  kubeml server stop
done
echo "wheel check: ok ($(basename "$WHEEL"), backends: ${BACKENDS[*]})"
