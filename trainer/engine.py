"""The training loop every stage shares: seeded shuffling, SGD with momentum and a cosine schedule,
gradient clipping, tqdm progress (epoch, loss terms, accuracy), NaN guards and per-epoch checkpoints.

A stage supplies a ``step(x, y) -> (loss, terms, logits)`` function and the optimiser's parameter
groups; the loop owns everything else, so resuming works the same for teacher, student and fine-tune.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from blockstore import Preprocess, resolve_device

from .data import batches
from .datasets import ImageData
from .errors import ConfigError, TrainerError

__all__ = ["Step", "TrainConfig", "evaluate", "fingerprint", "fit", "seed_everything", "select_device"]

log = logging.getLogger(__name__)

Step = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float], Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    """What every stage's optimisation loop needs; stage configs extend it."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 5.0  # max global gradient norm; None: no clipping
    max_steps: int | None = None  # cap on steps per epoch, for quick runs
    seed: int = 0
    device: str | None = None  # None: NETTAILOR_DEVICE, else cuda when present, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps must be positive")


def fingerprint(config: object, *extra: object) -> str:
    """A short stable hash of a config dataclass (minus presentation fields) and extra values."""
    d = {k: v for k, v in asdict(config).items() if k not in ("progress", "device")}  # type: ignore[call-overload]
    text = json.dumps([d, [str(e) for e in extra]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str | None) -> torch.device:
    return resolve_device(name)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, pre: Preprocess, device: torch.device, batch_size: int = 256,
             forward: Callable[[Tensor], Tensor] | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``data``; 0.0 for an empty set."""
    if len(data) == 0:
        return 0.0
    was = model.training
    model.eval()
    fn = forward or model
    correct = 0
    for imgs, labels in batches(data, batch_size):
        logits = fn(pre.normalize(imgs.to(device)))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    model.train(was)
    return correct / len(data)


def _save_ckpt(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, key: str) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        if st.get("momentum_buffer") is not None:
            tensors[f"opt.{i}"] = st["momentum_buffer"].contiguous()
    tmp = path.with_suffix(".tmp")
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata={"epoch": str(epoch), "key": key})
    tmp.replace(path)


def _load_ckpt(path: Path, model: nn.Module, opt: torch.optim.Optimizer, key: str) -> int:
    """Restore model and momentum from ``path``; the number of finished epochs, 0 if it does not fit."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            log.warning("checkpoint %s belongs to another configuration; starting over", path)
            return 0
        tensors = load_file(str(path))
    except Exception as e:
        log.warning("cannot read checkpoint %s (%s); starting over", path, e)
        return 0
    device = next(iter(model.state_dict().values())).device
    model.load_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")})
    params = [p for g in opt.param_groups for p in g["params"]]
    for k, v in tensors.items():
        if k.startswith("opt."):
            opt.state[params[int(k[4:])]]["momentum_buffer"] = v.to(device)
    return int(meta["epoch"])


def fit(model: nn.Module, groups: list[dict], data: ImageData, pre: Preprocess, config: TrainConfig, step: Step,
        device: torch.device, desc: str, checkpoint: Path | None = None) -> dict[str, list[float]]:
    """Optimise ``groups`` (SGD, momentum, cosine schedule) on ``data`` for ``config.epochs`` epochs.

    Each group may set its own ``lr``/``weight_decay``.  With ``checkpoint``, the model and the optimiser
    are saved after every epoch and a rerun continues from the last finished epoch.
    Returns per-epoch means of the loss terms and the training accuracy.
    """
    opt = torch.optim.SGD([dict(g) for g in groups], lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    params = [p for g in opt.param_groups for p in g["params"]]
    per_epoch = math.ceil(len(data) / config.batch_size) if len(data) else 0
    if config.max_steps is not None:
        per_epoch = min(per_epoch, config.max_steps)
    total = max(per_epoch * config.epochs, 1)
    key = fingerprint(config, desc, len(data))
    start = _load_ckpt(checkpoint, model, opt, key) if checkpoint is not None and checkpoint.is_file() else 0
    if start:
        log.info("%s: resuming after epoch %d from %s", desc, start, checkpoint)
    history: dict[str, list[float]] = {}
    for epoch in range(start, config.epochs):
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        sums: dict[str, float] = {}
        seen = correct = 0
        t0 = time.perf_counter()
        bar = tqdm(total=per_epoch, desc=f"{desc} {epoch + 1}/{config.epochs}", disable=not config.progress,
                   leave=False, dynamic_ncols=True)
        for i, (imgs, labels) in enumerate(batches(data, config.batch_size, shuffle=True, generator=gen)):
            if i >= per_epoch:
                break
            t = epoch * per_epoch + i
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * 0.5 * (1 + math.cos(math.pi * t / total))
            x, y = pre.normalize(imgs.to(device)), labels.to(device)
            loss, terms, logits = step(x, y)
            if not torch.isfinite(loss):
                raise TrainerError(f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1} "
                                   f"(terms {terms}); lower the learning rate or enable --grad-clip")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            n = len(labels)
            seen += n
            correct += int((logits.detach().argmax(1) == y).sum())
            for k, v in {"loss": float(loss.detach()), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v * n
            bar.update(1)
            bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()} | {"acc": f"{correct / seen:.3f}"})
        bar.close()
        means = {k: v / max(seen, 1) for k, v in sums.items()} | {"train_acc": correct / max(seen, 1)}
        for k, v in means.items():
            history.setdefault(k, []).append(v)
        log.info("%s epoch %d/%d: %s (%.1f s, %.0f img/s)", desc, epoch + 1, config.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in means.items()), time.perf_counter() - t0,
                 seen / max(time.perf_counter() - t0, 1e-9))
        if checkpoint is not None:
            _save_ckpt(checkpoint, model, opt, epoch + 1, key)
    return history
