"""The training loop every stage shares, counted in optimiser steps.

* **Budgets in steps.**  A stage runs ``config.steps`` optimiser steps; ``epochs`` is a convenience that
  converts to steps; by default the budget is ``auto_epochs`` passes over the data, clamped to
  ``[min_steps, max_steps]``, so a 1k-image folder gets enough steps for its alphas to move and a 60k
  one does not run for hours (:func:`resolve_steps`).
* **Early stopping.**  Every ``eval_every`` steps the stage's ``validate`` callback scores the model
  on the validation split; after ``patience`` checks without improvement the loop stops, and the best
  checkpoint is restored (``restore_best``).  A stage may also pass ``plateau``, a callback returning
  the numbers that must have settled (the student's alphas and E[C]) before it may stop.
* SGD with momentum and a cosine schedule over the budget, gradient clipping, NaN guards, tqdm
  progress, and a checkpoint at every check, so an interrupted stage resumes where it stopped.

Batches come from a :class:`torch.utils.data.DataLoader` whose batch sampler is a pure function of
(seed, step), so a resumed run draws exactly the batches it would have drawn.  A stage supplies a
``step(x, y) -> (loss, terms, logits)`` function and the optimiser's parameter groups.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from blockstore import Preprocess, resolve_device

from .distributed import init_from_env, is_main, rank_world
from .errors import ConfigError, TrainerError

__all__ = [
    "Step", "StepBatches", "TrainConfig", "evaluate", "fingerprint", "fit", "resolve_steps", "seed_everything",
    "select_device",
]

log = logging.getLogger(__name__)

Step = Callable[[Tensor, Tensor], tuple[Tensor, dict[str, float], Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    """What every stage's optimisation loop needs; stage configs extend it with their own defaults."""

    steps: int | None = None  # optimiser steps; None: from ``epochs``, else automatic
    epochs: float | None = None  # convenience: steps = ceil(epochs * train images / batch_size)
    auto_epochs: float = 5.0  # the automatic budget: this many passes over the data ...
    min_steps: int = 200  # ... but at least this many steps ...
    max_steps: int = 1500  # ... and at most this many (also caps ``epochs``; not ``steps``)
    batch_size: int = 64
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 5.0  # max global gradient norm; None: no clipping
    eval_every: int | None = None  # steps between validation checks; None: about 10 checks per run
    patience: int | None = 4  # checks without improvement before stopping; None: never stop early
    min_delta: float = 0.0005  # an improvement smaller than this (accuracy, 0-1) does not count
    restore_best: bool = True  # end with the best checkpoint, not the last
    workers: int = 0  # DataLoader worker processes (0: load in the training process)
    seed: int = 0
    device: str | None = None  # None: NETTAILOR_DEVICE, else cuda when present, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "min_steps", "max_steps", "batch_size", "eval_every", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be positive, got {v}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"epochs must be positive, got {self.epochs}")
        if not self.auto_epochs > 0:
            raise ConfigError("auto_epochs must be positive")
        if self.min_steps > self.max_steps:
            raise ConfigError(f"min_steps ({self.min_steps}) is above max_steps ({self.max_steps})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.min_delta < 0 or self.workers < 0:
            raise ConfigError("weight_decay, min_delta and workers must be >= 0")


def resolve_steps(config: TrainConfig, num_images: int) -> int:
    """The stage's budget in optimiser steps for a training split of ``num_images``."""
    if config.steps is not None:
        return config.steps
    per_epoch = max(1, math.ceil(num_images / config.batch_size))
    if config.epochs is not None:
        return max(1, min(math.ceil(config.epochs * per_epoch), config.max_steps))
    return int(min(max(math.ceil(config.auto_epochs * per_epoch), config.min_steps), config.max_steps))


def fingerprint(config: object, *extra: object) -> str:
    """A short stable hash of a config dataclass (minus presentation fields) and extra values."""
    skip = ("progress", "device", "workers")
    d = {k: v for k, v in asdict(config).items() if k not in skip}  # type: ignore[call-overload]
    text = json.dumps([d, [str(e) for e in extra]], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str | None) -> torch.device:
    """The training device; under torchrun also joins the process group (each rank on its own GPU)."""
    dev = resolve_device(name)
    if dev.type == "cuda" and dev.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    init_from_env(dev)
    return dev


class StepBatches(Sampler[list[int]]):
    """Batches of indices for steps ``start..total-1``: step t takes its slice of the epoch-seeded
    permutation, so the batches are a pure function of (seed, step) and resuming skips nothing.  With
    ``world`` processes (torchrun), rank r takes every world-th index of each global batch: the sampler
    is a DistributedSampler whose shards add up to the one-process batches."""

    def __init__(self, n: int, batch_size: int, total: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch_size, self.total, self.seed, self.start = n, batch_size, total, seed, start
        self.rank, self.world = rank, world
        self.per_epoch = max(1, n // batch_size) if n >= batch_size else 1

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = -1, None
        for t in range(self.start, self.total):
            e, i = divmod(t, self.per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + e))
            assert perm is not None
            yield perm[i * self.batch_size : (i + 1) * self.batch_size][self.rank :: self.world].tolist()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, pre: Preprocess, device: torch.device, batch_size: int = 256,
             forward: Callable[[Tensor], Tensor] | None = None) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``data``; 0.0 for an empty set."""
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        return 0.0
    was = model.training
    model.eval()
    fn = forward or model
    correct = 0
    for imgs, labels in DataLoader(data, batch_size=batch_size, shuffle=False):
        logits = fn(pre.normalize(imgs.to(device)))
        correct += int((logits.argmax(1).cpu() == labels).sum())
    model.train(was)
    return correct / n


# -- checkpoints ------------------------------------------------------------------------------------


@dataclass
class _State:
    """What a check saves besides the model: where the run is and how early stopping stands."""

    step: int = 0
    best: float = -1.0
    best_step: int = 0
    bad_checks: int = 0
    checks: list[dict] = field(default_factory=list)
    best_model: dict[str, Tensor] | None = None


def _save_ckpt(path: Path, model: nn.Module, opt: torch.optim.Optimizer, st: _State, key: str) -> None:
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    for k, v in (st.best_model or {}).items():
        tensors[f"best.{k}"] = v.contiguous()
    for i, s in opt.state_dict()["state"].items():
        if s.get("momentum_buffer") is not None:
            tensors[f"opt.{i}"] = s["momentum_buffer"].contiguous()
    meta = {"key": key, "state": json.dumps({k: v for k, v in asdict(st).items() if k != "best_model"})}
    tmp = path.with_suffix(".tmp")
    save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_ckpt(path: Path, model: nn.Module, opt: torch.optim.Optimizer, key: str) -> _State:
    """Restore model, momentum and loop state from ``path``; a fresh state if it does not fit."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            log.warning("checkpoint %s belongs to another configuration; starting over", path)
            return _State()
        tensors = load_file(str(path))
        st = _State(**json.loads(meta["state"]))
    except Exception as e:
        log.warning("cannot read checkpoint %s (%s); starting over", path, e)
        return _State()
    device = next(iter(model.state_dict().values())).device
    model.load_state_dict({k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    st.best_model = best or None
    params = [p for g in opt.param_groups for p in g["params"]]
    for k, v in tensors.items():
        if k.startswith("opt."):
            opt.state[params[int(k[4:])]]["momentum_buffer"] = v.to(device)
    return st


# -- the loop ----------------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _settled(checks: list[dict], tol: float) -> bool:
    """The plateau numbers moved less than ``tol`` (max abs change) between the last two checks."""
    if len(checks) < 2 or "plateau" not in checks[-1]:
        return True
    a, b = checks[-2].get("plateau"), checks[-1]["plateau"]
    if a is None or len(a) != len(b):
        return False
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0) < tol


def fit(model: nn.Module, groups: list[dict], data: Dataset, pre: Preprocess, config: TrainConfig, step: Step,
        device: torch.device, desc: str, checkpoint: Path | None = None,
        validate: Callable[[], float] | None = None, plateau: Callable[[], Sequence[float]] | None = None,
        plateau_tol: float = 0.01) -> dict:
    """Optimise ``groups`` on ``data`` for the stage's step budget, with early stopping on ``validate``.

    Each group may set its own ``lr``/``weight_decay``.  ``validate()`` returns a score to maximise
    (validation accuracy); ``plateau()`` returns numbers that must move less than ``plateau_tol``
    between checks before the run may stop early.  Returns the history: per-check means of the loss
    terms and the training accuracy, the validation scores, the steps run and why the run stopped.
    """
    opt = torch.optim.SGD([dict(g) for g in groups], lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    params = [p for g in opt.param_groups for p in g["params"]]
    n = len(data)  # type: ignore[arg-type]
    if n == 0:
        raise TrainerError(f"{desc}: the training split is empty")
    total = resolve_steps(config, n)
    every = config.eval_every or max(10, math.ceil(total / 10))
    key = fingerprint(config, desc, n)
    st = _load_ckpt(checkpoint, model, opt, key) if checkpoint is not None and checkpoint.is_file() else _State()
    if st.step:
        log.info("%s: resuming at step %d/%d from %s", desc, st.step, total, checkpoint)
    rank, world = rank_world()
    loader = DataLoader(data, batch_sampler=StepBatches(n, config.batch_size, total, config.seed, st.step, rank, world),
                        num_workers=config.workers, persistent_workers=False)
    sums: dict[str, float] = {}
    seen = correct = 0
    reason = "budget"
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=st.step, desc=desc, disable=not config.progress or rank > 0, leave=False,
               dynamic_ncols=True)
    model.train()
    for imgs, labels in loader:
        t = st.step
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * 0.5 * (1 + math.cos(math.pi * t / total))
        x, y = pre.normalize(imgs.to(device)), labels.to(device)
        loss, terms, logits = step(x, y)
        if not torch.isfinite(loss):
            raise TrainerError(f"{desc}: the loss became {loss.item()} at step {t + 1} (terms {terms}); "
                               f"lower the learning rate or enable --grad-clip")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        st.step += 1
        seen += len(labels)
        correct += int((logits.detach().argmax(1) == y).sum())
        for k, v in {"loss": float(loss.detach()), **terms}.items():
            sums[k] = sums.get(k, 0.0) + v * len(labels)
        bar.update(1)
        bar.set_postfix({k: f"{v / seen:.3f}" for k, v in sums.items()} | {"acc": f"{correct / seen:.3f}"})
        if st.step % every and st.step != total:
            continue
        check = {"step": st.step, **{k: v / max(seen, 1) for k, v in sums.items()}, "train_acc": correct / max(seen, 1)}
        sums, seen, correct = {}, 0, 0
        if _check(model, st, check, config, validate, plateau, plateau_tol):
            reason = "early_stop"
        log.info("%s step %d/%d: %s (%.0f s)", desc, st.step, total,
                 ", ".join(f"{k} {v:.4f}" for k, v in check.items() if isinstance(v, float)), time.perf_counter() - t0)
        if checkpoint is not None and is_main():
            _save_ckpt(checkpoint, model, opt, st, key)
        if reason != "budget":
            break
        model.train()
    bar.close()
    if validate is not None and config.restore_best and st.best_model is not None:
        model.load_state_dict(st.best_model)
    model.eval()
    return {"checks": st.checks, "steps": st.step, "budget": total, "stopped": reason, "best_step": st.best_step,
            "best_val": st.best if validate is not None else None}


def _check(model: nn.Module, st: _State, check: dict, config: TrainConfig, validate: Callable[[], float] | None,
           plateau: Callable[[], Sequence[float]] | None, plateau_tol: float) -> bool:
    """Score the model, keep the best snapshot, and say whether the run should stop now."""
    if plateau is not None:
        check["plateau"] = [float(v) for v in plateau()]
    st.checks.append(check)
    if validate is None:
        return False
    score = float(validate())
    check["val_acc"] = score
    if score > st.best + config.min_delta:
        st.best, st.best_step, st.bad_checks = max(score, st.best), st.step, 0
        if config.restore_best:
            st.best_model = _snapshot(model)
    else:
        st.bad_checks += 1
    return config.patience is not None and st.bad_checks >= config.patience and _settled(st.checks, plateau_tol)
