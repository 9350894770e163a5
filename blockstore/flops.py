"""Complexity accounting.

Convention (the one the ResNet and NetTailor papers use when they say "FLOPs"): one FLOP is one
multiply-accumulate of a convolution or fully connected layer.  Batch norm, ReLU, pooling and the
residual additions are not counted; they are a rounding error next to the convolutions.

For a convolution that is ``C_out * H_out * W_out * (C_in / groups) * k_h * k_w``; for a linear
layer ``in_features * out_features``.  Parameters count every learnable weight and bias; batch-norm
running statistics are buffers, not parameters.

With this convention torchvision's ResNet-34 at 224 px has 21.28 M parameters without its
classifier, 3.66 G FLOPs in all and 3.55 G FLOPs in its sixteen universal blocks.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_flops", "count_params", "conv1x1_flops"]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv1x1_flops(in_channels: int, out_channels: int, out_size: int) -> int:
    return in_channels * out_channels * out_size * out_size


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Run ``module(*inputs)`` once (batch size 1 expected) and count its FLOPs with hooks.

    Returns the count and the output, so that callers can chain stages.
    """
    total = 0

    def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            out = module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total, out
