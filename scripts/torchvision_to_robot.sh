#!/usr/bin/env bash
# From a torchvision weights file to a served, tailored task and a robot with no server, using only the
# commands the README documents.  Run from the repository root with the venv active:
#
#     bash scripts/torchvision_to_robot.sh [WORK_DIR]
#
# Offline, the "downloaded" torchvision file is stood in for by a ResNet-18 state dict that torchvision
# itself builds here (random weights, torchvision's exact format); with real ImageNet weights, skip step 0.
# Tiny limits keep it to minutes on a laptop; drop them for a real task.
set -euo pipefail
WORK=${1:-.nettailor/e2e}
PY=${PYTHON:-python}
export NETTAILOR_STORE="$WORK/store" NETTAILOR_TOKEN=${NETTAILOR_TOKEN:-e2e-secret}
PORT=${PORT:-8765}
mkdir -p "$WORK"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "0. a torchvision-format ResNet-18 state dict (stand-in for resnet18-f37072fd.pth)"
[ -f "$WORK/resnet18.pth" ] || "$PY" -c "import torch, torchvision; torch.manual_seed(0); \
torch.save(torchvision.models.resnet18().state_dict(), '$WORK/resnet18.pth')"

say "1. nettailor backbone import"
"$PY" -m nettailor backbone import "$WORK/resnet18.pth" --size 32 --normalization imagenet --default
"$PY" -m nettailor backbone list

say "2. nettailor tailor (MNIST digits, tiny limits) --publish"
"$PY" -m nettailor tailor --dataset mnist --train-limit 300 --val-limit 200 --test-limit 200 \
    --teacher-epochs 1 --student-epochs 1 --finetune-epochs 1 --sweep 0,4 --no-progress \
    --work-dir "$WORK/work" --out "$WORK/mnist.pack" --report-dir "$WORK/report" --publish

say "3. nettailor serve"
"$PY" -m nettailor serve --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
nettailor-client --url "http://127.0.0.1:$PORT" ready --wait 120

say "4. a folder of digits, predicted over HTTP and locally, and the task exported"
mkdir -p "$WORK/digits"
"$PY" bench/export_parity.py --dump-only --n 200 --dump "$WORK/digits"
nettailor-client --url "http://127.0.0.1:$PORT" predict mnist "$WORK/digits" --top-k 1 --format csv --quiet \
    > "$WORK/served.csv"
"$PY" -m nettailor predict --pack "$WORK/mnist.pack" "$WORK/digits" --top-k 1 --format csv --quiet > "$WORK/local.csv"
"$PY" -m nettailor export --task mnist --out "$WORK/export"

say "5. ONNX vs the server on 200 MNIST test digits"
"$PY" bench/export_parity.py --pack "$WORK/mnist.pack" --export-dir "$WORK/export" --n 200 \
    --url "http://127.0.0.1:$PORT" --out bench/results/export_parity.json
