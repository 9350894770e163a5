"""Alpha study: how the student's alpha learning rate, initialisation and complexity weight decide the
architecture within the default budget (docs/trainer.md quotes the table).

For one task and one trained teacher, train the student under each variant for the same step budget,
then report the block alphas (mean and min), the largest proxy alpha, E[C] at the end, the student's
validation accuracy, and how many blocks a 0.5 alpha cut would drop.

    .venv/bin/python bench/alpha_study.py --work /tmp/exp/mnist3k --dataset mnist --train-limit 3000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from blockstore import load_resident, open_store
from trainer.data import DataConfig, load_task
from trainer.losses import expected_complexity
from trainer.student import StudentConfig, train_student
from trainer.teacher import load_teacher

VARIANTS = {
    "default (lr x1, init 2/-2, g1 0.3)": {},
    "alpha lr x10": {"alpha_lr_scale": 10.0},
    "alpha lr x10, init 1/-1": {"alpha_lr_scale": 10.0, "alpha_init": (1.0, -1.0)},
    "alpha lr x10, gamma1 1.0": {"alpha_lr_scale": 10.0, "gamma_complexity": 1.0},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, required=True, help="a tailor work dir holding teacher.safetensors")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--train-limit", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--store", default=".nettailor/store")
    ap.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))))
    ap.add_argument("--out", type=Path, default=Path("bench/out/alpha_study.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    store = open_store(args.store)
    bb = load_resident(store, None, "cpu")
    data = load_task(DataConfig(dataset=args.dataset, train_limit=args.train_limit, val_limit=1000, test_limit=1000))
    teacher = load_teacher(args.work / "teacher.safetensors", bb, data.num_classes)
    rows = []
    names = list(VARIANTS)
    for i in (int(v) for v in args.variants.split(",")):
        name = names[i]
        cfg = StudentConfig(steps=args.steps, progress=False, patience=None, device="cpu", **VARIANTS[name])
        t0 = time.perf_counter()
        net, m = train_student(bb, teacher, data, cfg)
        with torch.no_grad():
            blocks, proxies = [], []
            for l in range(1, len(net.plan.layers) + 1):
                for src, a in zip(net.plan.paths(l), net.path_weights(l).tolist()):
                    (blocks if src is None else proxies).append(a)
            ec = float(expected_complexity(net))
        rows.append({"variant": name, "steps": args.steps, "val_acc": m["val_acc"], "E[C]": ec,
                     "block_alpha_mean": sum(blocks) / len(blocks), "block_alpha_min": min(blocks),
                     "proxy_alpha_max": max(proxies), "blocks_below_0.5": sum(a < 0.5 for a in blocks),
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "dataset": args.dataset,
                                    "train_limit": args.train_limit, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
