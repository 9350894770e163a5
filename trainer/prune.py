"""Pruning: from a trained student's alphas to a smaller :class:`blockstore.Plan`.

1. Self exclusion: drop every proxy whose alpha is below ``threshold`` and the ``num_blocks``
   universal blocks with the lowest alpha.
2. Input exclusion: a path whose source node has no inputs left is dropped (a node with no inputs
   takes its outgoing proxies, and the next block, with it).
3. Output exclusion: a node other than the last that no kept path reads is useless, so every path
   into it is dropped.
4. Rules 2-3 repeat until nothing changes.  If the last node lost every input, the best path into it
   is restored (preferring paths whose source is still live, then the highest alpha), recursively for
   the nodes that path needs, so a network always reaches the classifier.

The result keeps the surviving paths in their original order, so ``net.with_plan(plan)`` keeps their
alpha logits and renormalises the softmax over what survives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from blockstore import LayerPlan, Plan, TailoredNet

from .errors import ConfigError

__all__ = ["PruneConfig", "alphas_of", "prune", "prune_plan"]

Keep = dict[int, list[bool]]


@dataclass(frozen=True)
class PruneConfig:
    threshold: float = 0.05
    num_blocks: int = 0  # n: how many universal blocks to drop, lowest alpha first

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.num_blocks < 0:
            raise ConfigError(f"num_blocks must be >= 0, got {self.num_blocks}")


def alphas_of(net: TailoredNet) -> dict[int, list[float]]:
    """Each layer's path weights (softmax), in :meth:`Plan.paths` order."""
    return {l: net.path_weights(l).tolist() for l in range(1, len(net.plan.layers) + 1) if net.plan.paths(l)}


def _src(l: int, src: int | None) -> int:
    return l - 1 if src is None else src


def _forward(plan: Plan, keep: Keep) -> list[bool]:
    """Input exclusion, in layer order (one pass suffices); return the live nodes."""
    live = [True]
    for l in range(1, len(plan.layers) + 1):
        for i, src in enumerate(plan.paths(l)):
            if keep[l][i] and not live[_src(l, src)]:
                keep[l][i] = False
        live.append(any(keep[l]))
    return live


def _propagate(plan: Plan, keep: Keep) -> None:
    """Apply input and output exclusion to ``keep`` until nothing changes."""
    L = len(plan.layers)
    while True:
        before = {l: list(k) for l, k in keep.items()}
        _forward(plan, keep)
        needed = [False] * (L + 1)
        needed[L] = True
        for l in range(L, 0, -1):
            if not needed[l]:
                keep[l] = [False] * len(keep[l])
            for i, src in enumerate(plan.paths(l)):
                if keep[l][i]:
                    needed[_src(l, src)] = True
        if keep == before:
            return


def _revive(plan: Plan, keep: Keep, alphas: Mapping[int, Sequence[float]], node: int, live: list[bool]) -> None:
    """Restore the best path into ``node`` and, recursively, into the nodes it needs."""
    if node == 0 or live[node]:
        return
    paths = plan.paths(node)
    if not paths:
        raise ConfigError(f"cannot reconnect node {node}: the plan gives it no paths at all")
    i = max(range(len(paths)), key=lambda j: (live[_src(node, paths[j])], alphas[node][j]))
    keep[node][i] = True
    _revive(plan, keep, alphas, _src(node, paths[i]), live)
    live[node] = True


def prune_plan(plan: Plan, alphas: Mapping[int, Sequence[float]], threshold: float = 0.05,
               num_blocks: int = 0) -> Plan:
    """The plan that survives self exclusion (``threshold``, ``num_blocks``) and the exclusion rules."""
    PruneConfig(threshold, num_blocks)
    L = len(plan.layers)
    for l in range(1, L + 1):
        if len(alphas.get(l, ())) != len(plan.paths(l)):
            raise ConfigError(f"layer {l} has {len(plan.paths(l))} paths but {len(alphas.get(l, ()))} alphas")
    keep: Keep = {l: [True] * len(plan.paths(l)) for l in range(1, L + 1)}
    blocks = []
    for l in range(1, L + 1):
        for i, src in enumerate(plan.paths(l)):
            if src is None:
                blocks.append((alphas[l][i], l, i))
            elif alphas[l][i] < threshold:
                keep[l][i] = False
    if num_blocks > len(blocks):
        raise ConfigError(f"cannot drop {num_blocks} universal blocks: the plan keeps {len(blocks)}")
    for _, l, i in sorted(blocks)[:num_blocks]:
        keep[l][i] = False
    live = _forward(plan, keep)
    if not live[L]:
        _revive(plan, keep, alphas, L, live)
    _propagate(plan, keep)
    layers = []
    for l, lp in enumerate(plan.layers, start=1):
        k = keep[l]
        block = lp.block and k[0]
        offset = int(lp.block)
        proxies = tuple(p for j, p in enumerate(lp.proxies) if k[offset + j])
        layers.append(LayerPlan(block, proxies))
    return Plan(plan.arch, plan.bottleneck, plan.task_bn, tuple(layers))


def prune(net: TailoredNet, config: PruneConfig) -> TailoredNet:
    """A copy of ``net`` restricted to the pruned plan (the original is untouched)."""
    plan = prune_plan(net.plan, alphas_of(net), config.threshold, config.num_blocks)
    return net.with_plan(plan)
