"""Functional forward of the frozen universal blocks with per-task batch-norm statistics.

The shared modules are only read, never mutated or swapped, so any number of tasks (and threads)
can run the same block at once, each with its own running statistics.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["BNStats", "block_bns", "run_block", "run_stem"]


class BNStats(nn.Module):
    """One batch norm's running statistics, owned by a task."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        assert bn.running_mean is not None and bn.running_var is not None
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())

    running_mean: Tensor
    running_var: Tensor


Stats = Mapping[str, BNStats] | None


def block_bns(module: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The batch norms of a block, keyed as the task's statistics are (dots become '_':
    ``downsample.1`` -> ``downsample_1``, a ModuleDict-safe key)."""
    return {n.replace(".", "_"): m for n, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _bn(x: Tensor, bn: nn.BatchNorm2d, stats: Stats, key: str, training: bool) -> Tensor:
    if stats is None:  # frozen statistics: the backbone's own, in inference mode
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    s = stats[key]
    return F.batch_norm(x, s.running_mean, s.running_var, bn.weight, bn.bias, training, bn.momentum or 0.1, bn.eps)


def run_stem(conv: nn.Conv2d, bn: nn.BatchNorm2d, pool: nn.Module, x: Tensor, stats: Stats, training: bool) -> Tensor:
    return pool(F.relu(_bn(conv(x), bn, stats, "bn1", training)))


def run_block(block: nn.Module, x: Tensor, stats: Stats, training: bool) -> Tensor:
    """G_l's residual sum ``F(x) + shortcut(x)`` with the task's BN statistics, *before* the block's ReLU.

    The node applies the one ReLU after mixing its paths (``ReLU(alpha_G * (F + shortcut) + ...)``), so
    with the block as its only path the node equals the torchvision block's output.  ``training``
    updates the task's statistics in place."""
    if isinstance(block, BasicBlock):
        out = F.relu(_bn(block.conv1(x), block.bn1, stats, "bn1", training))
        out = _bn(block.conv2(out), block.bn2, stats, "bn2", training)
    elif isinstance(block, Bottleneck):
        out = F.relu(_bn(block.conv1(x), block.bn1, stats, "bn1", training))
        out = F.relu(_bn(block.conv2(out), block.bn2, stats, "bn2", training))
        out = _bn(block.conv3(out), block.bn3, stats, "bn3", training)
    else:
        raise TypeError(f"unsupported block type {type(block).__name__}")
    if block.downsample is not None:
        identity = _bn(block.downsample[0](x), block.downsample[1], stats, "downsample_1", training)
    else:
        identity = x
    return out + identity
