"""Training throughput of each stage (images/s) for a backbone and stem, to size demo budgets.

    .venv/bin/python bench/trainer_throughput.py --arch resnet18 --stems imagenet 3x3s2 --steps 6

Random weights and synthetic 32 px images: the numbers measure compute, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockstore import Backbone, BackboneConfig
from trainer.data import DataConfig, make_task
from trainer.datasets import synthetic
from trainer.engine import evaluate
from trainer.prune import PruneConfig, prune
from trainer.student import FinetuneConfig, StudentConfig, finetune, train_student
from trainer.teacher import TeacherConfig, train_teacher


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="backbone arch (default resnet18)")
    ap.add_argument("--stems", nargs="+", default=["imagenet", "3x3s2"], help="stems to measure")
    ap.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    ap.add_argument("--steps", type=int, default=6, help="training steps per stage (default 6)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/trainer_throughput.json"), help="JSON output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.batch_size * args.steps
    data = make_task("synthetic", synthetic(10, 32, n_train=n + n // 9 + 1, n_test=512), DataConfig("synthetic"))
    common = {"batch_size": args.batch_size, "steps": args.steps, "progress": False, "patience": None}
    rows = []
    for stem in args.stems:
        torch.manual_seed(0)
        bb = Backbone(BackboneConfig(args.arch, stem, 32, 10)).freeze().eval()
        row: dict = {"arch": args.arch, "stem": stem}
        t = time.perf_counter()
        teacher, _ = train_teacher(bb, data, TeacherConfig(**common))
        row["teacher_img_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        student, _ = train_student(bb, teacher, data, StudentConfig(**common))
        row["student_img_s"] = n / (time.perf_counter() - t)
        pruned = prune(student, PruneConfig(0.05, len(student.plan.layers) // 2))
        t = time.perf_counter()
        finetune(pruned, teacher, data, FinetuneConfig(**common))
        row["finetune_half_img_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        evaluate(student, data.test, data.preprocess, torch.device("cpu"))
        row["student_eval_img_s"] = len(data.test) / (time.perf_counter() - t)
        rows.append(row)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
