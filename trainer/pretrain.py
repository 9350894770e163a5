"""Pre-training a universal backbone on a source data set: the offline stand-in for ImageNet weights.

Users with torchvision weights skip this stage.  The result is a frozen :class:`blockstore.Backbone`
whose classifier is the source task's; the edge (CLI) stores its bytes in the blockstore.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from blockstore import ARCHS, STEMS, Backbone, BackboneConfig

from .data import TaskData
from .distributed import data_parallel
from .engine import TrainConfig, evaluate, fit, seed_everything, select_device
from .errors import ConfigError

__all__ = ["PretrainConfig", "pretrain"]


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    arch: str = "resnet18"
    stem: str = "imagenet"
    auto_epochs: float = 3.0
    min_steps: int = 500
    max_steps: int = 3000
    lr: float = 0.05
    batch_size: int = 128
    weight_decay: float = 5e-4
    patience: int | None = None  # pre-training runs its whole budget

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.stem not in STEMS:
            raise ConfigError(f"unknown stem {self.stem!r}; choose one of {list(STEMS)}")


def pretrain(data: TaskData, config: PretrainConfig, checkpoint: Path | None = None) -> tuple[Backbone, dict]:
    """Train a fresh backbone on ``data`` (all weights); return it frozen, in eval mode, and its metrics."""
    seed_everything(config.seed)
    device = select_device(config.device)
    bb_config = BackboneConfig(config.arch, config.stem, data.preprocess.size, data.num_classes)
    torch.manual_seed(config.seed)
    net = Backbone(bb_config).to(device)

    runner = data_parallel(net)

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float], Tensor]:
        logits = runner(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": float(loss.detach())}, logits

    history = fit(net, [{"params": list(net.parameters())}], data.training_set(), data.preprocess, config, step,
                  device, "pretrain", checkpoint, validate=lambda: evaluate(net, data.val, data.preprocess, device))
    net.eval()
    metrics = {
        "source": data.name,
        "val_acc": evaluate(net, data.val, data.preprocess, device),
        "test_acc": evaluate(net, data.test, data.preprocess, device),
        "history": history,
    }
    return net.freeze(), metrics
