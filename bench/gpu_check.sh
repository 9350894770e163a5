#!/usr/bin/env bash
# GPU check, one command: the GPU tests, the in-process executor rate on CUDA (both cross-task
# kernels), and a short serving benchmark with the server on CUDA; then one summary.
#
#   bash bench/gpu_check.sh            (about 4 minutes; needs a CUDA device and the serve extra)
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (default bench/out/gpu),
# REDIS_URL (default: a throw-away redis-server on a free port when redis-server is installed,
# else redis://127.0.0.1:6379/0).  Every step runs even if an earlier one failed; the summary
# says which failed.  Exit status: 0 only when every step passed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/clients${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember failure
    local name=$1; shift
    echo "[gpu_check] $name: $*"
    if "$@" >"$OUT/$name.log" 2>&1; then echo "pass" >"$OUT/$name.status"
    else echo "FAIL ($?)" >"$OUT/$name.status"; status=1; tail -20 "$OUT/$name.log"; fi
}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "[gpu_check] no CUDA device visible to $PY: nothing to check"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true

REDIS_PID=""
if [ -z "${REDIS_URL:-}" ]; then
    if command -v redis-server >/dev/null; then
        port=$("$PY" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
        redis-server --port "$port" --save "" --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
        REDIS_PID=$!
        REDIS_URL="redis://127.0.0.1:$port/0"
        sleep 1
    else
        REDIS_URL="redis://127.0.0.1:6379/0"
    fi
fi
trap '[ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null' EXIT

step tests "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
step executor "$PY" bench/executor_bench.py --device cuda --kernels looped,grouped --seconds 2 --rounds 2 \
    --out "$OUT/executor.json"
step executor_b256 "$PY" bench/executor_bench.py --device cuda --batch 256 --seconds 2 --rounds 2 \
    --out "$OUT/executor_b256.json"
step serve "$PY" bench/serve_bench.py --quick --tasks 1,20 --device cuda --redis "$REDIS_URL" \
    --out "$OUT/serve.json"
step multitask "$PY" bench/multitask_bench.py --quick --concurrency 8,32 --redis "$REDIS_URL" \
    --server-env NETTAILOR_DEVICE=cuda --out "$OUT/multitask.json"

OUT="$OUT" "$PY" - <<'EOF'
import json, os
from pathlib import Path
out = Path(os.environ["OUT"])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.is_file() else None
print("\n===== GPU check summary =====")
print("card:", (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else "?")
for step in ("tests", "executor", "executor_b256", "serve", "multitask"):
    s = out / f"{step}.status"
    print(f"{step:14s} {s.read_text().strip() if s.is_file() else 'not run'}")
tests = out / "tests.log"
if tests.is_file():
    print("pytest:", tests.read_text().strip().splitlines()[-1])
for name in ("executor.json", "executor_b256.json"):
    e = load(name)
    if e:
        print(f"executor img/s ({name}, batch {e['batch']}):",
              {k: round(v) for k, v in e["img_per_s"].items()}, {k: v for k, v in e.items() if k.startswith("ratios")})
s = load("serve.json")
if s:
    for r in s["results"]:
        print(f"served N={r['tasks']} C={r['concurrency']}: {r['throughput_rps']:.0f} req/s, p99 {r['p99_ms']:.1f} ms, "
              f"server {r['server_cores']:.2f} cores, {r.get('vs_executor_mixed', float('nan')):.2f} of the mixed rate")
    print("serve summary:", json.dumps(s["summary"]))
m = load("multitask.json")
if m:
    for k, v in m["summary"].items():
        print(f"multitask {k}: multi / single = {v['ratio_of_means']:.2f}")
EOF
exit $status
