"""PreparedTask: a task's pack turned into ready-to-run tensors on the device.

No module is built: the pack is validated against the backbone (names, dtypes, shapes,
finiteness), then every batch norm is folded away, the task's BN statistics into a per-channel
affine of the frozen blocks, and each proxy's BN into its 1x1 convolution.  What remains is a few
plain tensors per task, which is what makes a cold task switch cheap.  Loading is the hot spot of a
cold switch; inference goes through :class:`server.executor.Executor`.

The tensors are laid out for the executor's cross-task kernels (:mod:`server.kernels`):

* a proxy's 1x1 convolutions are matrices ``[in, out]`` applied to channels-last rows, so the proxies
  of many tasks reading one node run as one segmented matrix product;
* the path weight alpha of a proxy is folded into its last matrix, and the last biases of all the
  proxies into a layer is summed into one per-layer bias, so a node's mix is
  ``ReLU(alpha_G * block + sum_p x_p @ W_p + bias)``;
* a block's folded BN affines are packed into one ``[2, D]`` tensor (scale row, shift row) in the
  order :func:`bn_layout` gives, so a mixed batch gathers each block's affines in one indexing op.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from blockstore import Backbone, Plan, Preprocess, TailoredNet, TaskPack
from blockstore.frozen import block_bns
from blockstore.proxy import PROXY_STAGES

__all__ = ["Affine", "BNLayout", "FoldedProxy", "PreparedTask", "bn_layout", "fold_bn", "new_uid", "reference_net",
           "shared_affines"]

_uid = itertools.count(1)
_EMPTY = torch.empty(0)
Affine = tuple[Tensor, Tensor]
_BN_EPS = nn.BatchNorm2d(1).eps  # what blockstore.Proxy's batch norms use
BNLayout = list[dict[str, slice]]  # per block (0: the stem), BN name -> columns of the packed affine


def new_uid() -> int:
    """A task id unique in this process (the executor process keys its tasks by the server's ids)."""
    return next(_uid)


def fold_bn(weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor, eps: float) -> Affine:
    """BN at inference as ``x * scale + shift``."""
    scale = weight / torch.sqrt(var + eps)
    return scale.contiguous(), (bias - mean * scale).contiguous()


def _bns(backbone: Backbone) -> list[dict[str, nn.BatchNorm2d]]:
    return [{"bn1": backbone.net.bn1}, *(block_bns(blk) for blk in backbone.blocks)]


def bn_layout(backbone: Backbone) -> BNLayout:
    """The one definition of the packed affine's columns, for the stem (index 0) and every block."""
    out = []
    for bns in _bns(backbone):
        cols, at = {}, 0
        for name, bn in bns.items():
            cols[name] = slice(at, at + bn.num_features)
            at += bn.num_features
        out.append(cols)
    return out


def _pack_affines(bns: dict[str, nn.BatchNorm2d], stats: dict[str, tuple[Tensor, Tensor]]) -> Tensor:
    pairs = [fold_bn(bn.weight, bn.bias, *stats[name], bn.eps) for name, bn in bns.items()]
    return torch.stack([torch.cat([s for s, _ in pairs]), torch.cat([b for _, b in pairs])])


def shared_affines(backbone: Backbone) -> list[Tensor]:
    """The backbone's own (frozen) BN statistics, packed like a task's: what tasks without their own use."""
    return [_pack_affines(bns, {n: (bn.running_mean, bn.running_var) for n, bn in bns.items()})  # type: ignore[misc]
            for bns in _bns(backbone)]


@dataclass(frozen=True)
class FoldedProxy:
    """Max-pool by ``stride``, then the 1x1 convs as matrices ``[in, out]`` with BN folded in.

    Basic proxies have one matrix; bottleneck proxies two, with ``hidden_bias`` and a ReLU between.
    The last matrix is scaled by the proxy's path weight; its bias lives in the task's ``layer_bias``."""

    stride: int
    mats: tuple[Tensor, ...]
    hidden_bias: Tensor | None = None


def _fold_proxy(t: dict[str, Tensor], key: str, stride: int, bottleneck: bool, alpha: Tensor) -> tuple[FoldedProxy,
                                                                                                      Tensor]:
    """The folded proxy, and its output bias (scaled by ``alpha``)."""
    mats, biases = [], []
    for conv, bn in PROXY_STAGES[bottleneck]:  # the one definition of a proxy's layout
        w = t[f"{key}.{conv}.weight"]
        scale, shift = fold_bn(t[f"{key}.{bn}.weight"], t[f"{key}.{bn}.bias"],
                               t[f"{key}.{bn}.running_mean"], t[f"{key}.{bn}.running_var"], _BN_EPS)
        mats.append(w.flatten(1) * scale[:, None])  # [out, in]
        biases.append(shift)
    mats[-1] = mats[-1] * alpha
    hidden = biases[0].contiguous() if len(biases) > 1 else None
    return FoldedProxy(stride, tuple(m.t().contiguous() for m in mats), hidden), biases[-1] * alpha


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
    block_weight: dict[int, float]  # alpha of the block path, per layer that keeps its block
    proxies: dict[tuple[int, int], FoldedProxy]  # (layer, source node) -> proxy
    layer_bias: dict[int, Tensor]  # per layer with proxies: the sum of their (alpha-scaled) output biases
    head: Affine  # classifier weight transposed [C, classes], bias [classes]
    affines: dict[int, Tensor] | None  # block (0: stem) -> packed [2, D] folded BN; None: the backbone's own
    num_classes: int = 0
    nbytes: int = 0  # the bytes of its tensors (wherever they are held: see ``resident``)
    uid: int = field(default_factory=new_uid)
    resident: bool = True  # False: a description only; the executor process holds the tensors
    spilled: bool = False  # loaded from the spill tier (server.spill), not from the store

    def description(self) -> PreparedTask:
        """This task without its tensors, for the server process when the executor process holds them
        (server.engine): what requests need (labels, preprocessing, version) and the same ``uid``."""
        return replace(self, block_weight={}, proxies={}, layer_bias={}, head=(_EMPTY, _EMPTY), affines=None,
                       resident=False)

    @classmethod
    def from_pack(cls, pack: TaskPack, backbone: Backbone, *, version: int, uid: int | None = None,
                  validated: bool = False) -> PreparedTask:
        """Validate ``pack`` against ``backbone`` (CorruptPack, BackboneMismatch) and fold it.  ``uid``:
        the id another process gave the task's description (server.engine); default a new one.
        ``validated``: the caller vouches that these exact bytes passed against this backbone."""
        if not validated:
            pack.validate(backbone)
        dev = next(backbone.parameters()).device
        plan = pack.plan
        with torch.inference_mode():
            t = {k: v.to(dev, non_blocking=True) for k, v in pack.tensors.items()}
            block_weight: dict[int, float] = {}
            proxies: dict[tuple[int, int], FoldedProxy] = {}
            layer_bias: dict[int, Tensor] = {}
            for l, lp in enumerate(plan.layers, start=1):
                if not lp.num_paths:
                    continue
                alpha = torch.softmax(t[f"alphas.{l}"], 0)
                if lp.block:
                    block_weight[l] = float(alpha[0])
                for k, p in enumerate(lp.proxies, start=int(lp.block)):
                    proxies[(l, p.src)], bias = _fold_proxy(t, f"proxies.{l}_{p.src}", p.stride, plan.bottleneck,
                                                            alpha[k])
                    layer_bias[l] = layer_bias[l] + bias if l in layer_bias else bias
            affines = None
            if plan.task_bn:
                bns = _bns(backbone)
                kept = [0, *plan.blocks_kept]
                prefix = ["norms.stem"] + [f"norms.b{l}" for l in range(1, len(bns))]
                affines = {b: _pack_affines(bns[b], {n: (t[f"{prefix[b]}.{n}.running_mean"],
                                                         t[f"{prefix[b]}.{n}.running_var"]) for n in bns[b]})
                           for b in kept}
            head = (t["head.weight"].t().contiguous(), t["head.bias"])
        task = cls(pack.task_id, version, pack.version, pack.sha256, list(pack.labels), pack.preprocess, plan,
                   dict(pack.metrics), block_weight, proxies, layer_bias, head, affines, num_classes=head[1].shape[0],
                   uid=new_uid() if uid is None else uid)
        task.nbytes = sum(x.numel() * x.element_size() for x in task.tensors())
        return task

    def tensors(self) -> list[Tensor]:
        """Every tensor this task holds on the device."""
        out = [*self.head, *self.layer_bias.values(), *(self.affines or {}).values()]
        for fp in self.proxies.values():
            out += [*fp.mats, *([fp.hidden_bias] if fp.hidden_bias is not None else [])]
        return out


def reference_net(pack: TaskPack, backbone: Backbone) -> TailoredNet:
    """The blockstore's reference network for ``pack`` (tests compare the executor against it)."""
    return TaskPack.from_bytes(pack.to_bytes()).build(backbone)
