"""Synthetic task tensors and plans for tests and benchmarks (never for real tasks).

Throughput, latency and correctness checks need tasks whose tensors differ like trained ones do
(alphas, BN statistics, proxies) and plans that drop blocks, without training anything.
"""

from __future__ import annotations

import random

import torch

from .backbone import BackboneSpec
from .plan import LayerPlan, Plan
from .tailored import TailoredNet

__all__ = ["random_plan", "randomize"]


def randomize(net: TailoredNet, seed: int, scale: float = 0.1, alpha_scale: float = 0.5) -> TailoredNet:
    """Fill every task tensor with seeded values (BN variances in [0.5, 1.5)); return ``net`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if "running_var" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * (alpha_scale if "alphas" in name else scale))
    return net.eval()


def random_plan(spec: BackboneSpec, rng: random.Random, *, keep_block: float = 0.6, keep_proxy: float = 0.3,
                max_skip: int = 3, bottleneck: bool = False) -> Plan:
    """A valid plan keeping each block with probability ``keep_block`` and each proxy of the
    ``max_skip``-reach plan with ``keep_proxy``; a layer left without paths keeps its block."""
    full = Plan.full(spec, max_skip, bottleneck=bottleneck)
    layers = []
    for lp in full.layers:
        block = rng.random() < keep_block
        proxies = tuple(p for p in lp.proxies if rng.random() < keep_proxy)
        layers.append(LayerPlan(block or not proxies, proxies))
    return Plan(full.arch, bottleneck, True, tuple(layers))
