"""Where a batch's time goes in the executor: mixed batches over 20 tasks against one-task batches.

The same packs and workloads as ``bench/executor_bench.py`` (``mixed`` and ``one``).  Each workload
runs ``--batches`` batches of 32 with the executor's phases timed by wrapping its methods (wall
clock; with ``--threads 1``, the default, every operator finishes before the timer reads): the
frozen blocks, the proxies (also per (layer, source node): runs and rows a batch, microseconds a
row), the max-pools and layer biases around them, the stem, the heads, and what lies between the timed
phases (``other``: the per-batch bookkeeping).  A diagnostic, not a rate: the wrappers
add a few microseconds a call, so rates come from ``executor_bench.py``.

Run:  .venv/bin/python bench/executor_phases.py [--threads 1] [--batches 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from executor_bench import _rows, build_packs, make_backbone  # noqa: E402

from blockstore import TaskPack  # noqa: E402
from server import kernels  # noqa: E402
from server.executor import Executor, PreparedTask  # noqa: E402

_METHODS = ("_stem", "_block", "_block_path", "_proxy_paths", "_mix_keys")


def _timed(times: Counter, name: str, f):  # type: ignore[no-untyped-def]
    def g(*a, **k):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            times[name] += time.perf_counter() - t0
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--batches", type=int, default=100, help="timed batches per workload")
    ap.add_argument("--tasks", type=int, default=20, help="tasks mixed in a batch")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "executor_phases.json"), help="JSON output path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = make_backbone("imagenet")
    tasks = [PreparedTask.from_pack(TaskPack.from_bytes(p), bb, version=1)
             for p in build_packs(bb, [f"task-{i:03d}" for i in range(args.tasks)])]
    ex = Executor(bb)
    times: Counter = Counter()
    proxy: Counter = Counter()
    runs: Counter = Counter()
    rows: Counter = Counter()
    for name in _METHODS:
        setattr(ex, name, _timed(times, name, getattr(ex, name)))
    add_proxies, heads = kernels.add_proxies, kernels.heads

    def timed_proxies(out, x, rs, key, kernel):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        add_proxies(out, x, rs, key, kernel)
        k = f"layer {key[0]} <- node {key[1]}, {x.shape[1]}x{x.shape[2]}, {x.shape[-1]}->{out.shape[-1]}"
        proxy[k] += time.perf_counter() - t0
        runs[k] += len(rs)
        rows[k] += sum(c - a for _, a, c in rs)

    kernels.add_proxies = timed_proxies  # the executor calls kernels.* through the module
    kernels.heads = _timed(times, "heads", heads)
    xs = torch.randn(32, 3, 32, 32)
    rng = random.Random(1)

    def step(w: str, k: int) -> None:
        ex.run([(tasks[j], xs[i]) for i, j in enumerate(_rows(w, 32, len(tasks), k, rng))])

    result = {}
    for w in ("mixed", "one"):
        for k in range(20):
            step(w, k)
        for c in (times, proxy, runs, rows):
            c.clear()
        t0 = time.perf_counter()
        for k in range(args.batches):
            step(w, k)
        total = time.perf_counter() - t0
        per = {k: 1e3 * v / args.batches for k, v in times.items()}
        per["proxies"] = 1e3 * sum(proxy.values()) / args.batches
        # _proxy_paths holds the proxies' products, the max-pools of their source nodes and the layer biases.
        per["pooling + layer bias"] = per.pop("_proxy_paths") - per["proxies"]
        per["other"] = 1e3 * total / args.batches - sum(per.values())  # between the timed phases
        result[w] = {"ms_per_batch": 1e3 * total / args.batches, "phases_ms": per,
                     "proxies": {k: {"ms": 1e3 * proxy[k] / args.batches, "runs": runs[k] / args.batches,
                                     "rows": rows[k] / args.batches, "us_per_row": 1e6 * proxy[k] / rows[k]}
                                 for k in sorted(proxy)}}
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "loadavg": os.getloadavg()},
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "config": vars(args), **result}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    for w in ("mixed", "one"):
        print(w, f"{result[w]['ms_per_batch']:.2f} ms/batch",
              {k: round(v, 2) for k, v in sorted(result[w]["phases_ms"].items(), key=lambda kv: -kv[1])})


if __name__ == "__main__":
    main()
