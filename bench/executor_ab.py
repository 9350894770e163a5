"""Two checkouts' executors, batch by batch in one process: which one computes the same batches faster.

Timings on the shared 2-core machine drift by 1.5x within minutes, so two runs of
``bench/executor_bench.py`` cannot tell a 3% change.  This script imports ``server`` from checkout A
and from checkout B (each with its own modules), prepares the same packs for both on one backbone,
and runs each batch through A and through B in turn (the order alternating), so that drift hits both
alike.  It reports each one's median milliseconds a batch and the ratio B / A per workload.

Run:  .venv/bin/python bench/executor_ab.py A_DIR B_DIR [--tasks 20] [--batch 16] [--batches 400]
      (e.g. A: a clone of the commit before a change, B: this checkout)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from executor_bench import _rows, build_packs, make_backbone, write_result  # noqa: E402


def _import_from(root: Path):  # type: ignore[no-untyped-def]
    """``server.executor`` and ``blockstore.TaskPack`` as ``root`` has them (fresh modules)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("server", "blockstore")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        import server.executor as executor
        from blockstore import TaskPack
    finally:
        sys.path.remove(str(root))
    return executor, TaskPack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="checkout A (the reference)")
    ap.add_argument("b", help="checkout B")
    ap.add_argument("--tasks", type=int, default=20, help="tasks the batches draw from")
    ap.add_argument("--batch", type=int, default=16, help="rows a batch (the served closed loop's is about 16)")
    ap.add_argument("--batches", type=int, default=400, help="batches per workload (the first 10%% warm up)")
    ap.add_argument("--workloads", default="zipf,mixed,one", help="of bench/executor_bench.py's")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as served)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "executor_ab.json"), help="JSON output path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = make_backbone("imagenet")  # both import the backbone's class from this checkout's blockstore
    packs = build_packs(bb, [f"task-{i:04d}" for i in range(args.tasks)])
    sides = []
    for root in (args.a, args.b):
        executor, task_pack = _import_from(Path(root).resolve())
        tasks = [executor.PreparedTask.from_pack(task_pack.from_bytes(p), bb, version=1) for p in packs]
        sides.append((executor.Executor(bb), tasks))
    frames = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8)
    rng = random.Random(1)
    results = {}
    for wl in args.workloads.split(","):
        times: list[list[float]] = [[], []]
        for k in range(args.batches):
            rows = _rows(wl, args.batch, args.tasks, k, rng)
            for j in ((0, 1) if k % 2 else (1, 0)):
                ex, tasks = sides[j]
                t0 = time.perf_counter()
                ex.run_frames([(frames[i], (tasks[t],)) for i, t in enumerate(rows)])
                if k >= args.batches // 10:
                    times[j].append(time.perf_counter() - t0)
        a, b = (statistics.median(t) * 1e3 for t in times)
        results[wl] = {"a_ms": a, "b_ms": b, "b_over_a": b / a, "b_over_a_sum": sum(times[1]) / sum(times[0])}
        print(f"[ab] {wl:5s} N={args.tasks} batch {args.batch}: A {a:6.2f} ms  B {b:6.2f} ms  B/A {b / a:.3f}",
              flush=True)
    write_result(args.out, {"config": vars(args), "results": results})
    print(f"[ab] wrote {args.out}")


if __name__ == "__main__":
    main()
