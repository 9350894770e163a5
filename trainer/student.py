"""The student: a :class:`blockstore.TailoredNet` on the frozen backbone with a full plan (every block
plus proxies from the k closest earlier nodes), trained with ``CE + gamma1 * E[C] + gamma2 * Omega``.

Only task tensors train: proxies, alphas and the classifier (plus, by default, the frozen blocks' per-task
BN statistics, which update because the blocks' BN runs in training mode).  The backbone is not a
submodule of the net, so its weights never reach the optimiser.  SGD with momentum; the alphas get no
weight decay and may get their own learning-rate scale.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockstore import Backbone, Plan, TailoredNet

from .data import TaskData
from .distributed import data_parallel
from .engine import TrainConfig, evaluate, fit, seed_everything, select_device
from .errors import ConfigError
from .losses import InputExclusion, distillation, expected_complexity, path_complexities
from .teacher import teacher_forward

__all__ = [
    "FinetuneConfig", "StudentConfig", "alpha_table", "finetune", "make_student", "param_groups",
    "student_forward", "train_student",
]


@dataclass(frozen=True)
class StudentConfig(TrainConfig):
    """About 6 passes over the data within [400, 2000] steps.  It stops early only once validation
    accuracy has stalled *and* the architecture has settled (no path weight moved by ``plateau_tol``
    between two checks), and it ends with its last state, not its best-scoring one: what the student
    produces is an architecture decision, and fine-tuning recovers the accuracy."""

    auto_epochs: float = 6.0
    min_steps: int = 400
    max_steps: int = 2000
    restore_best: bool = False
    plateau_tol: float = 0.01
    alpha_init: tuple[float, float] = (2.0, -2.0)  # path logits a: universal block, proxies
    lr: float = 0.03
    max_skip: int | None = 3  # proxy reach k: 1, 3, 5..., or None for dense
    gamma_complexity: float = 0.3
    gamma_distill: float = 10.0
    task_bn: bool = True  # per-task BN statistics for the frozen blocks; False freezes the backbone's
    input_exclusion: InputExclusion = "source"
    alpha_lr_scale: float = 1.0
    init_head_from_teacher: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_skip is not None and self.max_skip < 1:
            raise ConfigError("max_skip (k) must be at least 1, or None for dense")
        if self.gamma_complexity < 0 or self.gamma_distill < 0:
            raise ConfigError("gamma_complexity and gamma_distill must be >= 0")
        if self.input_exclusion not in ("source", "previous"):
            raise ConfigError("input_exclusion must be 'source' or 'previous'")
        if self.alpha_lr_scale <= 0:
            raise ConfigError("alpha_lr_scale must be positive")
        if len(self.alpha_init) != 2 or self.plateau_tol <= 0:
            raise ConfigError("alpha_init is (block logit, proxy logit) and plateau_tol must be positive")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Fine-tuning a pruned net: the same loss with gamma1 = 0, about 10 passes within [400, 1500] steps,
    stopped early on validation with the best checkpoint restored.  (A 3k-image MNIST task pruned to 2
    of 8 blocks: 150 steps at lr 0.01 ended 0.7 points below its teacher on validation, still rising;
    600 steps at lr 0.03 ended 0.4 points above it; docs/trainer.md.)"""

    auto_epochs: float = 10.0
    min_steps: int = 400
    max_steps: int = 1500
    patience: int | None = 3
    lr: float = 0.03
    gamma_distill: float = 10.0
    alpha_lr_scale: float = 1.0


def make_student(backbone: Backbone, num_classes: int, config: StudentConfig) -> TailoredNet:
    backbone.freeze().eval()
    plan = Plan.full(backbone.spec, config.max_skip, bottleneck=backbone.bottleneck, task_bn=config.task_bn)
    net = TailoredNet(backbone, plan, num_classes)
    block, proxy = config.alpha_init
    with torch.no_grad():
        for l in range(1, len(plan.layers) + 1):
            for i, src in enumerate(plan.paths(l)):
                net.alphas[str(l)][i] = block if src is None else proxy
    return net


def param_groups(net: TailoredNet, lr: float, alpha_lr_scale: float = 1.0) -> list[dict]:
    """Alphas (no weight decay) and the other task parameters, selected by module, not by name."""
    alphas = list(net.alphas.parameters())
    rest = [p for m in (net.proxies, net.head) for p in m.parameters()]
    if {id(p) for p in alphas + rest} != {id(p) for p in net.parameters()}:
        raise RuntimeError("TailoredNet has parameters outside proxies, alphas and head; update param_groups")
    return [{"params": rest}, {"params": alphas, "weight_decay": 0.0, "lr": lr * alpha_lr_scale}]


@contextmanager
def _still_stats(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run BN layers in training mode without touching their running statistics (momentum 0)."""
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            if nbt is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(nbt)


def student_forward(net: TailoredNet, x: Tensor) -> tuple[Tensor, list[Tensor | None]]:
    """Logits of the ordinary forward, and nodes 1..L recomputed from *detached* inputs (for Omega).

    One pass: a frozen block's output does not depend on any task parameter, so its detached-input
    version is the same tensor detached; only the (cheap) proxies run a second time, on detached
    inputs, with their BN statistics left untouched.
    """
    nodes: list[Tensor | None] = [net.stem(x)]
    local: list[Tensor | None] = []
    for l in range(1, len(net.plan.layers) + 1):
        paths = net.plan.paths(l)
        if not paths:
            nodes.append(None)
            local.append(None)
            continue
        branches = net.branches(l, nodes)
        proxies = [net.proxy(l, s) for s in paths if s is not None]
        with _still_stats(proxies):
            local_br = [b.detach() if s is None else net.proxy(l, s)(nodes[s].detach())  # type: ignore[union-attr]
                        for s, b in zip(paths, branches)]
        nodes.append(net.mix(l, branches))
        local.append(net.mix(l, local_br))
    last = nodes[-1]
    assert last is not None
    return net.classify(last), local


class _StudentStep(nn.Module):
    """:func:`student_forward` as a module, so DistributedDataParallel can wrap it under torchrun."""

    def __init__(self, net: TailoredNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        return student_forward(self.net, x)


def _train(net: TailoredNet, teacher: Backbone, data: TaskData, config: TrainConfig, gamma1: float,
           gamma2: float, input_exclusion: InputExclusion, alpha_lr_scale: float, desc: str,
           checkpoint: Path | None) -> dict:
    device = select_device(config.device)
    net.to(device)
    teacher.to(device).eval()
    complexity = path_complexities(net)

    runner = data_parallel(_StudentStep(net))

    def step(x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float], Tensor]:
        logits, local = runner(x)
        ce = F.cross_entropy(logits, y)
        with torch.no_grad():
            t_nodes, t_logits = teacher_forward(teacher, x)
        omega = distillation(local, t_nodes, logits, t_logits)
        if gamma1 > 0:
            ec = expected_complexity(net, input_exclusion, complexity)
        else:
            with torch.no_grad():
                ec = expected_complexity(net, input_exclusion, complexity)
        loss = ce + gamma1 * ec + gamma2 * omega
        return loss, {"ce": float(ce.detach()), "E[C]": float(ec.detach()), "omega": float(omega.detach())}, logits

    def alphas() -> list[float]:
        with torch.no_grad():
            return [a for l in range(1, len(net.plan.layers) + 1) for a in net.path_weights(l).tolist()]

    history = fit(net, param_groups(net, config.lr, alpha_lr_scale), data.training_set(), data.preprocess, config,
                  step, device, desc, checkpoint, validate=lambda: evaluate(net, data.val, data.preprocess, device),
                  plateau=alphas if gamma1 > 0 else None, plateau_tol=getattr(config, "plateau_tol", 0.01))
    net.eval()
    return {
        "val_acc": evaluate(net, data.val, data.preprocess, device),
        "test_acc": evaluate(net, data.test, data.preprocess, device),
        "history": history,
    }


def train_student(backbone: Backbone, teacher: Backbone, data: TaskData, config: StudentConfig,
                  checkpoint: Path | None = None) -> tuple[TailoredNet, dict]:
    """Build the proxy-augmented net on the frozen ``backbone`` and train it.  Returns it and its metrics."""
    seed_everything(config.seed)
    net = make_student(backbone.to(select_device(config.device)), data.num_classes, config)
    if config.init_head_from_teacher:
        net.head.load_state_dict(teacher.head.state_dict())
    metrics = _train(net, teacher, data, config, config.gamma_complexity, config.gamma_distill,
                     config.input_exclusion, config.alpha_lr_scale, "student", checkpoint)
    return net, metrics


def finetune(net: TailoredNet, teacher: Backbone, data: TaskData, config: FinetuneConfig,
             checkpoint: Path | None = None, desc: str = "finetune") -> dict:
    """Retrain ``net``'s remaining task parameters in place with gamma1 = 0.  Returns its metrics."""
    seed_everything(config.seed)
    return _train(net, teacher, data, config, 0.0, config.gamma_distill, "source", config.alpha_lr_scale,
                  desc, checkpoint)


def alpha_table(net: TailoredNet) -> list[list[tuple[int | None, float]]]:
    """Per layer: (source, alpha) for every kept path; source None is the universal block."""
    with torch.no_grad():
        return [list(zip(net.plan.paths(l), net.path_weights(l).tolist())) if net.plan.paths(l) else []
                for l in range(1, len(net.plan.layers) + 1)]
