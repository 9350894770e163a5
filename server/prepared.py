"""PreparedTask: a task's pack turned into ready-to-run tensors on the device.

No module is built: the pack is validated against the backbone (names, dtypes, shapes,
finiteness), then every batch norm is folded away, the task's BN statistics into a per-channel
affine of the frozen blocks, and each proxy's BN into its 1x1 convolution.  What remains is a few
plain tensors per task, which is what makes a cold task switch cheap.  Loading is the hot spot of a
cold switch; inference goes through :class:`server.executor.Executor`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from blockstore import Backbone, Plan, Preprocess, TailoredNet, TaskPack
from blockstore.frozen import block_bns
from blockstore.proxy import PROXY_STAGES

__all__ = ["Affine", "FoldedProxy", "PreparedTask", "fold_bn", "reference_net"]

_uid = itertools.count(1)
Affine = tuple[Tensor, Tensor]
_BN_EPS = nn.BatchNorm2d(1).eps  # what blockstore.Proxy's batch norms use


def fold_bn(weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float) -> Affine:
    """BN at inference as ``x * scale + shift``."""
    scale = weight / torch.sqrt(var + eps)
    return scale.contiguous(), (bias - mean * scale).contiguous()


@dataclass(frozen=True)
class FoldedProxy:
    """Max-pool by ``stride``, then one or two 1x1 convs with BN folded in (ReLU between two)."""

    stride: int
    stages: tuple[Affine, ...]  # (conv weight [out, in, 1, 1], bias [out]) per stage


def _fold_proxy(t: dict[str, Tensor], key: str, stride: int, bottleneck: bool) -> FoldedProxy:
    stages = []
    for conv, bn in PROXY_STAGES[bottleneck]:  # the one definition of a proxy's layout
        w = t[f"{key}.{conv}.weight"]
        scale, shift = fold_bn(t[f"{key}.{bn}.weight"], t[f"{key}.{bn}.bias"],
                               t[f"{key}.{bn}.running_mean"], t[f"{key}.{bn}.running_var"], _BN_EPS)
        stages.append(((w * scale.view(-1, 1, 1, 1)).contiguous(), shift))
    return FoldedProxy(stride, tuple(stages))


@dataclass(eq=False)
class PreparedTask:
    """A task's ready-to-run tensors on the backbone's device (what the pack cache holds)."""

    task_id: str
    version: int
    pack_version: str
    sha256: str
    labels: list[str]
    preprocess: Preprocess
    plan: Plan
    metrics: dict
    weights: dict[int, Tensor]  # softmax(alpha) per layer with paths
    proxies: dict[tuple[int, int], FoldedProxy]  # (layer, source node) -> proxy
    head: Affine  # classifier weight [classes, C], bias [classes]
    affines: dict[str, Affine] | None  # "stem/bn1", "<layer>/<bn>": the task's folded BN; None: shared
    nbytes: int = 0
    uid: int = field(default_factory=lambda: next(_uid))

    @classmethod
    def from_pack(cls, pack: TaskPack, backbone: Backbone, *, version: int) -> PreparedTask:
        """Validate ``pack`` against ``backbone`` (CorruptPack, BackboneMismatch) and fold it."""
        pack.validate(backbone)
        dev = next(backbone.parameters()).device
        with torch.inference_mode():
            t = {k: v.to(dev, non_blocking=True) for k, v in pack.tensors.items()}
            weights = {l: torch.softmax(t[f"alphas.{l}"], 0)
                       for l, lp in enumerate(pack.plan.layers, start=1) if lp.num_paths}
            proxies = {(l, p.src): _fold_proxy(t, f"proxies.{l}_{p.src}", p.stride, pack.plan.bottleneck)
                       for l, lp in enumerate(pack.plan.layers, start=1) for p in lp.proxies}
            affines = None
            if pack.plan.task_bn:
                bn1 = backbone.net.bn1
                affines = {"stem/bn1": fold_bn(bn1.weight, bn1.bias, t["norms.stem.bn1.running_mean"],
                                               t["norms.stem.bn1.running_var"], bn1.eps)}
                for l in pack.plan.blocks_kept:
                    for name, bn in block_bns(backbone.blocks[l - 1]).items():
                        key = f"norms.b{l}.{name}"
                        affines[f"{l}/{name}"] = fold_bn(bn.weight, bn.bias, t[f"{key}.running_mean"],
                                                         t[f"{key}.running_var"], bn.eps)
            head = (t["head.weight"], t["head.bias"])
        task = cls(pack.task_id, version, pack.version, pack.sha256, list(pack.labels), pack.preprocess, pack.plan,
                   dict(pack.metrics), weights, proxies, head, affines)
        task.nbytes = sum(x.numel() * x.element_size() for x in task.tensors())
        return task

    def tensors(self) -> list[Tensor]:
        """Every tensor this task holds on the device."""
        out = [*self.weights.values(), *self.head]
        out += [x for fp in self.proxies.values() for stage in fp.stages for x in stage]
        out += [x for pair in (self.affines or {}).values() for x in pair]
        return out


def reference_net(pack: TaskPack, backbone: Backbone) -> TailoredNet:
    """The blockstore's reference network for ``pack`` (tests compare the executor against it)."""
    return TaskPack.from_bytes(pack.to_bytes()).build(backbone)
