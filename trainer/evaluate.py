"""``nettailor evaluate PACK --dataset ...``: a pack's accuracy on data of the user's own, with no server.

It reports overall and per-class accuracy and the confusion matrix (rows: true class, columns:
predicted), as JSON and as a PNG.  The pack's own preprocessing is applied, exactly as the server does;
the data set's classes are matched to the pack's labels by name, so a folder whose class folders carry
the task's label names evaluates whatever order they sort in.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from blockstore import TailoredNet, TaskPack

from .errors import DataError

__all__ = ["confusion", "evaluate_pack", "plot_confusion", "register"]

log = logging.getLogger(__name__)


@torch.no_grad()
def confusion(net: TailoredNet, pack: TaskPack, data, label_map: list[int], device: torch.device,
              batch_size: int = 256) -> torch.Tensor:
    """``[classes, classes]`` counts: row = true class (in the pack's label order), column = predicted."""
    k = len(pack.labels)
    cm = torch.zeros(k, k, dtype=torch.int64)
    lut = torch.tensor(label_map, dtype=torch.int64)
    net.eval()
    for imgs, labels in DataLoader(data, batch_size=batch_size):
        pred = net(pack.preprocess.normalize(imgs.to(device))).argmax(1).cpu()
        cm.index_put_((lut[labels], pred), torch.ones_like(pred), accumulate=True)
    return cm


def evaluate_pack(pack: TaskPack, net: TailoredNet, data, data_classes: list[str], device: torch.device) -> dict:
    """Accuracy, per-class accuracy and the confusion matrix of ``net`` (built from ``pack``) on ``data``."""
    where = {name: i for i, name in enumerate(pack.labels)}
    if set(data_classes) == set(pack.labels):
        label_map = [where[c] for c in data_classes]
    elif len(data_classes) == len(pack.labels):
        log.warning("the data's classes %s are not the pack's labels %s; matching them by position",
                    data_classes[:5], pack.labels[:5])
        label_map = list(range(len(data_classes)))
    else:
        raise DataError(f"the data have {len(data_classes)} classes {data_classes[:5]}, the pack "
                        f"{len(pack.labels)} labels {pack.labels[:5]}: they cannot be matched")
    cm = confusion(net, pack, data, label_map, device)
    total = int(cm.sum())
    per_class = {lab: (float(cm[i, i]) / float(cm[i].sum()) if cm[i].sum() else None)
                 for i, lab in enumerate(pack.labels)}
    return {"task_id": pack.task_id, "images": total, "accuracy": float(cm.diag().sum()) / max(total, 1),
            "per_class": per_class, "labels": list(pack.labels), "confusion": cm.tolist(),
            "pack_metrics": {k: pack.metrics.get(k) for k in ("val_acc", "test_acc", "teacher_test_acc")}}


def plot_confusion(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = torch.tensor(result["confusion"], dtype=torch.float64)
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    k = len(result["labels"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * k, 1.0 + 0.45 * k))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), result["labels"], rotation=90, fontsize=7)
    ax.set_yticks(range(k), result["labels"], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['task_id']}: {100 * result['accuracy']:.2f}% of {result['images']} images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(sub: argparse._SubParsersAction) -> None:
    from .cli_args import add_backbone_args, add_data_args

    p = sub.add_parser("evaluate", help="a pack's accuracy, per-class accuracy and confusion matrix on a data set")
    p.add_argument("pack", type=Path, help="the .pack file")
    add_data_args(p)
    add_backbone_args(p)
    p.add_argument("--split", default="test", choices=("test", "val", "train"),
                   help="which split of --dataset to evaluate (default test)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for <task>-eval.json and <task>-confusion.png (default runs/<task>)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default NETTAILOR_DEVICE, else auto)")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .cli import _backbone
    from .cli_args import data_config
    from .data import load_task
    from .engine import select_device
    from .export import write_json

    if not args.pack.is_file():
        raise DataError(f"pack file {args.pack} does not exist")
    pack = TaskPack.from_bytes(args.pack.read_bytes())
    if args.backbone_id is None and args.backbone_file is None:
        args.backbone_id = pack.backbone_id
    bb = _backbone(args, args.device)
    cfg = data_config(args, pack.preprocess.size)
    data = load_task(cfg, (pack.preprocess.mean, pack.preprocess.std))
    net = pack.build(bb).to(select_device(args.device))
    result = evaluate_pack(pack, net, getattr(data, args.split), data.classes, select_device(args.device))
    result["dataset"], result["split"] = args.dataset, args.split
    out = args.out or Path("runs") / pack.task_id
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{pack.task_id}-eval.json", result)
    plot_confusion(result, out / f"{pack.task_id}-confusion.png")
    worst = sorted((v, k) for k, v in result["per_class"].items() if v is not None)[:3]
    print(json.dumps({"task_id": pack.task_id, "dataset": args.dataset, "split": args.split,
                      "images": result["images"], "accuracy": result["accuracy"],
                      "worst_classes": {k: v for v, k in worst}, "json": str(out / f"{pack.task_id}-eval.json"),
                      "png": str(out / f"{pack.task_id}-confusion.png")}, indent=2))
    return 0
