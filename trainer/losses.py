"""The student's regularisers: the expected complexity E[C] (paper eq. 9-10) and the distillation Omega (eq. 11).

E[C].  Every path i of layer l (the universal block G_l or a proxy A_p^l) has a normalised complexity
``c_i`` (its FLOPs over the backbone's total, ``BackboneSpec.total_flops``; ``spec.complexity(l)`` for the
block) and a weight ``alpha_i`` (softmax over the layer's paths).  With ``r = 1 - alpha``, the path is
excluded when its own weight vanishes (self), when the node it reads has no inputs (input), or when the
node it writes is read by nobody (output).  We implement the linear (union-bound) form

    E[C] = sum_l sum_i c_i * (1 - r_i - P_in(i) - P_out(l))
    P_in(i)  = prod_{j into s(i)} (1 - alpha_j)       (0 for the stem output, node 0)
    P_out(l) = prod_{j reading l} (1 - alpha_j)       (0 for the last node, which the classifier reads)

``s(i)`` depends on ``input_exclusion``:

* ``"source"`` (the default, the paper's eq. 10): the node the path actually reads, i.e. l-1 for the
  block and p for a proxy A_p^l.  This is the rule :mod:`trainer.prune` applies.
* ``"previous"`` (the reference implementation): node l-1 for every path of layer l.

The reference code also uses P_in = 1 at the first layer and P_out = 1 at the last, a constant offset
with no gradient; we use the exact 0.  Being linear, E[C] can go negative (DESIGN.md saw -0.24); the
loop logs it as is, and clipping plus lr 0.03 keep the alphas stable.

Omega.  ``mean((x_l - t_l)^2)`` between the student's node l, computed from *detached* inputs
(layer-local distillation), and the teacher's block output, summed over the live nodes 1..L and the
logits (student logits from the ordinary forward), divided by the number of blocks L, as the reference
does (the logits are the (L+1)-th term, not counted in the divisor).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from blockstore import TailoredNet
from blockstore.proxy import proxy_flops

__all__ = ["InputExclusion", "distillation", "expected_complexity", "path_complexities", "toy_expected_complexity"]

InputExclusion = Literal["source", "previous"]


def path_complexities(net: TailoredNet) -> dict[int, list[float]]:
    """Normalised FLOPs of every path of every layer, in :meth:`Plan.paths` order."""
    spec, plan = net.backbone.spec, net.plan
    out = {}
    for l, lp in enumerate(plan.layers, start=1):
        cs = [spec.complexity(l)] if lp.block else []
        size = spec.nodes[l].size
        cs += [proxy_flops(p.in_channels, p.out_channels, size, plan.bottleneck) / spec.total_flops for p in lp.proxies]
        out[l] = cs
    return out


def toy_expected_complexity(alphas: dict[int, Tensor], paths: dict[int, list[int | None]],
                            complexity: dict[int, list[float]], num_layers: int,
                            input_exclusion: InputExclusion = "source") -> Tensor:
    """E[C] from explicit path weights (softmax already applied), path sources and complexities."""
    if input_exclusion not in ("source", "previous"):
        raise ValueError(f"input_exclusion must be 'source' or 'previous', got {input_exclusion!r}")
    ref = next(iter(alphas.values()))
    zero, one = ref.new_zeros(()), ref.new_ones(())
    dead = [zero]  # P(node q has no inputs)
    readers: list[list[Tensor]] = [[] for _ in range(num_layers + 1)]
    for l in range(1, num_layers + 1):
        ps = paths.get(l, [])
        dead.append(torch.prod(1 - alphas[l]) if ps else one)
        for i, src in enumerate(ps):
            readers[l - 1 if src is None else src].append(alphas[l][i])
    unread = [torch.prod(1 - torch.stack(r)) if r else one for r in readers]
    unread[num_layers] = zero  # the classifier always reads the last node
    total = zero
    for l in range(1, num_layers + 1):
        for i, src in enumerate(paths.get(l, [])):
            s = l - 1 if src is None or input_exclusion == "previous" else src
            total = total + complexity[l][i] * (alphas[l][i] - dead[s] - unread[l])
    return total


def expected_complexity(net: TailoredNet, input_exclusion: InputExclusion = "source",
                        complexity: dict[int, list[float]] | None = None) -> Tensor:
    """E[C] of ``net``'s current alphas; differentiable in every alpha."""
    plan = net.plan
    paths = {l: plan.paths(l) for l in range(1, len(plan.layers) + 1)}
    alphas = {l: net.path_weights(l) for l, ps in paths.items() if ps}
    return toy_expected_complexity(alphas, paths, complexity or path_complexities(net), len(plan.layers),
                                   input_exclusion)


def distillation(student_nodes: list[Tensor | None], teacher_nodes: list[Tensor], student_logits: Tensor,
                 teacher_logits: Tensor) -> Tensor:
    """Omega: per-node MSE (nodes 1..L, dead nodes skipped) plus the logits' MSE, over L blocks."""
    total = F.mse_loss(student_logits, teacher_logits)
    for s, t in zip(student_nodes, teacher_nodes):
        if s is not None:
            total = total + F.mse_loss(s, t)
    return total / len(teacher_nodes)
