"""Proxy layers A_p^l: cheap task-specific bridges from an earlier node p to node l.

This module is the one definition of a proxy's layout.  :class:`Proxy` names its submodules, and
everything else derives from it: the pack's tensor spec (:func:`proxy_tensor_spec`), the server's
batch-norm folding (:data:`PROXY_STAGES`), and the cost accounting (:func:`proxy_params`,
:func:`proxy_flops`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from .flops import conv1x1_flops

__all__ = ["PROXY_STAGES", "Proxy", "proxy_flops", "proxy_params", "proxy_tensor_spec", "proxy_width"]

# (conv, batch norm) submodule names of each stage, in order; a ReLU sits between two stages.
PROXY_STAGES: dict[bool, tuple[tuple[str, str], ...]] = {
    False: (("conv", "bn"),),
    True: (("down", "bn_down"), ("up", "bn_up")),
}


def proxy_width(out_channels: int) -> int:
    """The hidden width of a bottleneck proxy: 4x narrower than the block's own bottleneck, which is
    ``out_channels // 4`` in a ResNet-50, so ``out_channels // 16`` (the paper's choice)."""
    return max(out_channels // 16, 1)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=False)


class Proxy(nn.Module):
    """Max-pool to the target resolution, then 1x1 conv + BN (basic ResNets), or, for bottleneck
    ResNets, 1x1 ``down`` to :func:`proxy_width`, BN, ReLU, 1x1 ``up``, BN.

    Max-pooling uses ``ceil_mode`` so that odd sizes land where a stride-s 3x3 conv lands.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, bottleneck: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.bottleneck = bottleneck
        self.pool: nn.Module = nn.MaxPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        if bottleneck:
            mid = proxy_width(out_channels)
            self.down, self.bn_down = _conv1x1(in_channels, mid), nn.BatchNorm2d(mid)
            self.up, self.bn_up = _conv1x1(mid, out_channels), nn.BatchNorm2d(out_channels)
        else:
            self.conv, self.bn = _conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels)

    def stages(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(getattr(self, c), getattr(self, b)) for c, b in PROXY_STAGES[self.bottleneck]]

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        for i, (conv, bn) in enumerate(self.stages()):
            if i:
                x = torch.relu(x)
            x = bn(conv(x))
        return x


_Spec = tuple[tuple[str, torch.dtype, tuple[int, ...]], ...]


@lru_cache(maxsize=256)
def _spec(in_channels: int, out_channels: int, bottleneck: bool) -> _Spec:
    with torch.device("meta"):
        p = Proxy(in_channels, out_channels, 1, bottleneck)
    return tuple((k, v.dtype, tuple(v.shape)) for k, v in p.state_dict().items())


def proxy_tensor_spec(in_channels: int, out_channels: int,
                      bottleneck: bool) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of a proxy's ``state_dict()``, read off a :class:`Proxy` built on the meta
    device (cached per shape, so validating a pack builds no module)."""
    return {k: (dt, shape) for k, dt, shape in _spec(in_channels, out_channels, bottleneck)}


def proxy_flops(in_channels: int, out_channels: int, out_size: int, bottleneck: bool) -> int:
    if bottleneck:
        mid = proxy_width(out_channels)
        return conv1x1_flops(in_channels, mid, out_size) + conv1x1_flops(mid, out_channels, out_size)
    return conv1x1_flops(in_channels, out_channels, out_size)


def proxy_params(in_channels: int, out_channels: int, bottleneck: bool) -> int:
    """Learnable parameters (conv weights, BN weight and bias); BN running statistics are buffers."""
    return sum(_numel(shape) for k, _, shape in _spec(in_channels, out_channels, bottleneck)
               if k.endswith((".weight", ".bias")))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
