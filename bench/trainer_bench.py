"""Tailor tasks of different difficulty on one universal backbone pre-trained on another data set.

Pre-trains (or loads) a universal backbone on --source (Fashion-MNIST by default), tailors every
--tasks entry (by default the easy 'mnist-01' and the harder 10-way 'mnist'), and writes a JSON and a
markdown table: teacher and tailored test accuracy, shared and task parameters, FLOPs, blocks kept,
share of the universal blocks' parameters removed, wall time.  It then checks the targets:

* the easiest task (highest teacher test accuracy) stays within 0.5 points of its teacher's test
  accuracy while removing at least 50% of the universal blocks' parameters;
* the easier task is pruned more (larger share of block parameters removed) than the harder one.

The real run (docs/trainer.md gives the timing):

    .venv/bin/python bench/trainer_bench.py

A smoke run (about two minutes):

    .venv/bin/python bench/trainer_bench.py --arch resnet10 --pretrain-limit 2000 --train-limit 1000 \
        --val-limit 500 --test-limit 1000 --teacher-epochs 1 --student-epochs 1 --finetune-epochs 1 \
        --out bench/out/smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockstore import Backbone
from trainer.data import DataConfig, load_task
from trainer.pretrain import PretrainConfig, pretrain
from trainer.report import write_report
from trainer.student import FinetuneConfig, StudentConfig
from trainer.tailor import TailorConfig, tailor
from trainer.teacher import TeacherConfig


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="fashion", help="pre-training data set (default fashion)")
    ap.add_argument("--tasks", nargs="+", default=["mnist-01", "mnist"], help="target tasks (default mnist-01 mnist)")
    ap.add_argument("--arch", default="resnet18", help="backbone arch (default resnet18)")
    ap.add_argument("--stem", default="3x3s2", help="backbone stem (default 3x3s2)")
    ap.add_argument("--backbone-file", type=Path, default=None, help="reuse this pre-trained backbone .safetensors")
    ap.add_argument("--pretrain-epochs", type=int, default=1, help="pre-training epochs (default 1)")
    ap.add_argument("--pretrain-limit", type=int, default=None, help="pre-training images (default all 54k)")
    ap.add_argument("--train-limit", type=int, default=10000, help="training images per task (default 10000)")
    ap.add_argument("--val-limit", type=int, default=2000, help="validation images per task (default 2000)")
    ap.add_argument("--test-limit", type=int, default=None, help="test images per task (default all)")
    ap.add_argument("--teacher-epochs", type=int, default=2, help="teacher epochs (default 2)")
    ap.add_argument("--student-epochs", type=int, default=3, help="student epochs (default 3)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="fine-tune epochs per n (default 1)")
    ap.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    ap.add_argument("--sweep", default=None, help="values of n, e.g. '0,2,4,6' (default 0..L-1, early stop)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/trainer"), help="output folder")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    return ap.parse_args()


def _row(task: str, result, wall: float) -> dict:
    m = result.pack.metrics
    return {
        "task": task, "teacher_test_acc": m["teacher_test_acc"], "tailored_test_acc": m["test_acc"],
        "delta_points": 100 * (m["test_acc"] - m["teacher_test_acc"]), "teacher_val_acc": m["teacher_val_acc"],
        "tailored_val_acc": m["val_acc"], "shared_params": m["shared_params"], "task_params": m["task_params"],
        "flops": m["flops"], "backbone_flops": m["backbone_flops"], "blocks_kept": m["blocks_kept"],
        "blocks_total": m["blocks_total"], "blocks_params_removed": m["blocks_params_removed"], "n": m["n"],
        "wall_s": wall,
    }


def _markdown(rows: list[dict], checks: dict, header: str) -> str:
    lines = [header, "", "| task | teacher test | tailored test | delta (pt) | shared params | task params | "
             "FLOPs (M) | blocks kept | block params removed | wall (s) |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['task']} | {100 * r['teacher_test_acc']:.2f}% | {100 * r['tailored_test_acc']:.2f}% | "
                     f"{r['delta_points']:+.2f} | {r['shared_params']:,} | {r['task_params']:,} | "
                     f"{r['flops'] / 1e6:.1f} / {r['backbone_flops'] / 1e6:.1f} | "
                     f"{r['blocks_kept']}/{r['blocks_total']} | {100 * r['blocks_params_removed']:.1f}% | "
                     f"{r['wall_s']:.0f} |")
    lines += ["", *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items())]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"batch_size": args.batch_size, "progress": args.progress}
    t0 = time.perf_counter()
    if args.backbone_file is not None:
        bb = Backbone.from_bytes(args.backbone_file.read_bytes())
        pre_metrics: dict = {"file": str(args.backbone_file)}
    else:
        src = load_task(DataConfig(args.source, train_limit=args.pretrain_limit, val_limit=2000))
        bb, pre_metrics = pretrain(src, PretrainConfig(arch=args.arch, stem=args.stem, epochs=args.pretrain_epochs,
                                                       **common | {"batch_size": 128}))
        (args.out / "backbone.safetensors").write_bytes(bb.to_bytes())
    pretrain_s = time.perf_counter() - t0
    bb.freeze().eval()
    rows = []
    sweep = tuple(int(t) for t in args.sweep.split(",")) if args.sweep else None
    for task in args.tasks:
        t = time.perf_counter()
        data = load_task(DataConfig(task, train_limit=args.train_limit, val_limit=args.val_limit,
                                    test_limit=args.test_limit))
        config = TailorConfig(
            task_id=task, teacher=TeacherConfig(epochs=args.teacher_epochs, **common),
            student=StudentConfig(epochs=args.student_epochs, **common),
            finetune=FinetuneConfig(epochs=args.finetune_epochs, **common), sweep=sweep,
        )
        result = tailor(bb, data, config, args.out / "work" / f"{task}-{bb.backbone_id[:8]}")
        (args.out / f"{task}.pack").write_bytes(result.pack.to_bytes())
        write_report(result.report, args.out)
        rows.append(_row(task, result, time.perf_counter() - t))
    by_ease = sorted(rows, key=lambda r: -r["teacher_test_acc"])
    easiest, hardest = by_ease[0], by_ease[-1]
    checks = {
        f"easiest task ({easiest['task']}) within 0.5 points of its teacher on test":
            easiest["delta_points"] >= -0.5,
        f"easiest task ({easiest['task']}) removes >= 50% of the universal blocks' parameters":
            easiest["blocks_params_removed"] >= 0.5,
        f"easier task ({easiest['task']}) pruned more than harder ({hardest['task']})":
            easiest["blocks_params_removed"] > hardest["blocks_params_removed"],
    }
    header = (f"# Trainer benchmark\n\n{bb.config.arch} ({bb.config.stem} stem, 32 px) pre-trained on {args.source} "
              f"in {pretrain_s:.0f} s ({json.dumps({k: v for k, v in pre_metrics.items() if k != 'history'})}); "
              f"{torch.get_num_threads()} threads.")
    (args.out / "trainer_bench.md").write_text(_markdown(rows, checks, header))
    (args.out / "trainer_bench.json").write_text(json.dumps(
        {"backbone_id": bb.backbone_id, "arch": bb.config.arch, "stem": bb.config.stem, "pretrain_s": pretrain_s,
         "pretrain": {k: v for k, v in pre_metrics.items() if k != "history"}, "args": vars(args), "rows": rows,
         "checks": checks}, indent=2, default=str))
    print((args.out / "trainer_bench.md").read_text())
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
