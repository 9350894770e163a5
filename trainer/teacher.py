"""The teacher: the whole pre-trained network fine-tuned on the target task.

A teacher is a :class:`blockstore.Backbone` of the same arch and stem whose classifier has the task's
classes.  All its weights train.  It is saved as the backbone's own safetensors blob (never pickled),
and :func:`teacher_forward` exposes its block outputs, the targets of the student's Omega term.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from blockstore import Backbone, BackboneError

from .data import TaskData
from .distributed import data_parallel
from .engine import TrainConfig, evaluate, fit, seed_everything, select_device
from .errors import CheckpointError

__all__ = ["TeacherConfig", "load_teacher", "make_teacher", "teacher_forward", "train_teacher"]


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    """Fine-tuning every weight: about 6 passes over the data within [300, 1500] steps, stopped early
    on validation accuracy with the best checkpoint restored."""

    auto_epochs: float = 6.0
    min_steps: int = 300
    max_steps: int = 1500
    lr: float = 0.01
    weight_decay: float = 1e-4


def make_teacher(backbone: Backbone, num_classes: int, seed: int = 0) -> Backbone:
    """A trainable copy of ``backbone`` (stem and blocks) with a fresh ``num_classes``-way classifier."""
    torch.manual_seed(seed)
    teacher = Backbone(replace(backbone.config, num_classes=num_classes))
    head = backbone.head
    for src, dst in zip(backbone.net.children(), teacher.net.children()):
        if src is not head:  # the source task's classifier does not transfer
            dst.load_state_dict(src.state_dict())
    teacher.to(next(backbone.parameters()).device)
    for p in teacher.parameters():
        p.requires_grad_(True)
    return teacher


def teacher_forward(teacher: Backbone, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """The outputs of blocks G_1..G_L (nodes 1..L) and the logits."""
    h = teacher.stem_modules(x)
    ends = []
    for blk in teacher.blocks:
        h = blk(h)
        ends.append(h)
    return ends, teacher.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def train_teacher(backbone: Backbone, data: TaskData, config: TeacherConfig,
                  checkpoint: Path | None = None) -> tuple[Backbone, dict]:
    """Fine-tune every weight of ``backbone`` on ``data``.  Returns the teacher and its metrics."""
    seed_everything(config.seed)
    device = select_device(config.device)
    teacher = make_teacher(backbone.to(device), data.num_classes, config.seed)
    pre = data.preprocess

    runner = data_parallel(teacher)

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float], Tensor]:
        logits = runner(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": float(loss.detach())}, logits

    history = fit(teacher, [{"params": list(teacher.parameters())}], data.training_set(), pre, config, step,
                  device, "teacher", checkpoint, validate=lambda: evaluate(teacher, data.val, pre, device))
    teacher.eval()
    metrics = {
        "val_acc": evaluate(teacher, data.val, pre, device),
        "test_acc": evaluate(teacher, data.test, pre, device),
        "history": history,
    }
    return teacher, metrics


def load_teacher(path: Path, backbone: Backbone, num_classes: int) -> Backbone:
    """Read a teacher saved with ``teacher.to_bytes()`` and check that it fits ``backbone`` and the task."""
    if not path.is_file():
        raise CheckpointError(f"teacher file {path} does not exist (run 'nettailor teacher' first)")
    try:
        teacher = Backbone.from_bytes(path.read_bytes())
    except BackboneError as e:
        raise CheckpointError(f"{path} is not a teacher: {e.detail}") from None
    want = replace(backbone.config, num_classes=num_classes)
    if teacher.config != want:
        raise CheckpointError(f"teacher {path} is a {teacher.config}, the task needs {want}")
    return teacher.to(next(backbone.parameters()).device).eval()
