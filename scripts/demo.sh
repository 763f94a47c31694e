#!/usr/bin/env bash
# The README's demo: from a fresh clone to LeNet-5 trained on Fashion-MNIST by two functions.
#
#   bash scripts/demo.sh
#
# Sets up what is missing (system dataset package, .venv, torch, kubeml), converts
# Fashion-MNIST to .npy, starts a local kubeml server on its own home and port, uploads the
# dataset, deploys examples/lenet_fashion.py, trains it with N=2 functions and K-step
# averaging, prints the history and the test accuracy, runs one inference, and stops the
# server. Knobs: DEMO_EPOCHS (3), DEMO_K (8), DEMO_LR (0.01), KUBEML_PORT (10142).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

DEMO_DIR=${DEMO_DIR:-${TMPDIR:-/tmp}/kubeml-demo-$(id -u)}
EPOCHS=${DEMO_EPOCHS:-3}
K=${DEMO_K:-8}
LR=${DEMO_LR:-0.01}
export KUBEML_HOME="$DEMO_DIR/home"  # a home of its own: the demo never touches ~/.kubeml
export KUBEML_PORT=${KUBEML_PORT:-10142}
unset KUBEML_URL
PY=.venv/bin/python
kubeml() { .venv/bin/kubeml "$@"; }

if [ ! -e "$DEMO_DIR/fashion/test_y.npy" ]; then
  echo "==> converting Fashion-MNIST to .npy"
  $PY examples/data.py fashion-mnist "$DEMO_DIR/fashion"
fi

kubeml server stop >/dev/null  # a server left over by an interrupted run
rm -rf "$KUBEML_HOME"
trap 'kubeml server stop' EXIT
echo "==> kubeml server start"
kubeml server start

echo "==> kubeml dataset create"
D="$DEMO_DIR/fashion"
kubeml dataset create -n fashion --traindata "$D/train_x.npy" --trainlabels "$D/train_y.npy" \
  --testdata "$D/test_x.npy" --testlabels "$D/test_y.npy"

echo "==> kubeml function create"
kubeml function create --name lenet --code examples/lenet_fashion.py

echo "==> kubeml train (N=2, K=$K, $EPOCHS epochs, lr $LR)"
start=$(date +%s)
# stdout: the task id, then a summary; the live progress goes to stderr.
trained=$(kubeml train -f lenet -d fashion --epochs "$EPOCHS" --parallelism 2 --static \
  --K "$K" --lr "$LR" --validate-every 1 --watch)
task_id=$(head -n 1 <<<"$trained")
tail -n +2 <<<"$trained"
echo "==> trained in $(($(date +%s) - start)) s"

echo "==> kubeml history get --id $task_id"
kubeml history get --id "$task_id"

echo "==> kubeml infer -n $task_id (the first 10 test images)"
$PY - "$D" "$DEMO_DIR/samples.json" <<'PYEOF'
import json, sys
import numpy as np
x = np.load(f"{sys.argv[1]}/test_x.npy")[:10]
json.dump(x.tolist(), open(sys.argv[2], "w"))
print("labels:     ", np.load(f"{sys.argv[1]}/test_y.npy")[:10].tolist())
PYEOF
echo "predictions: $(kubeml infer -n "$task_id" --datafile "$DEMO_DIR/samples.json")"

kubeml history get --id "$task_id" --json | $PY -c '
import json, sys
epochs = json.load(sys.stdin)["epochs"]
accuracy = epochs[-1]["accuracy"]
print(f"test accuracy after {len(epochs)} epochs: {accuracy:.2f}% (target: above 85%)")
sys.exit(0 if accuracy > 85 else 1)
'
