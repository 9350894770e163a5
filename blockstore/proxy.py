"""Proxy layers A_p^l: cheap task-specific bridges from an earlier node p to node l."""

from __future__ import annotations

from torch import Tensor, nn

from .flops import conv1x1_flops

__all__ = ["Proxy", "proxy_flops", "proxy_params"]


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, bias=False)


def _mid(out_channels: int) -> int:
    return max(out_channels // 4, 1)


class Proxy(nn.Module):
    """Max-pool to the target resolution, then 1x1 conv + BN (basic), or, for bottleneck ResNets,
    1x1 down, BN, ReLU, 1x1 up, BN with a width of ``out_channels // 4``.

    Max-pooling uses ``ceil_mode`` so that odd sizes land where a stride-s 3x3 conv lands.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, bottleneck: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.pool: nn.Module = nn.MaxPool2d(stride, stride, ceil_mode=True) if stride > 1 else nn.Identity()
        if bottleneck:
            mid = _mid(out_channels)
            self.body = nn.Sequential(
                _conv1x1(in_channels, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                _conv1x1(mid, out_channels), nn.BatchNorm2d(out_channels),
            )
        else:
            self.body = nn.Sequential(_conv1x1(in_channels, out_channels), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.pool(x))


def proxy_flops(in_channels: int, out_channels: int, out_size: int, bottleneck: bool) -> int:
    if bottleneck:
        mid = _mid(out_channels)
        return conv1x1_flops(in_channels, mid, out_size) + conv1x1_flops(mid, out_channels, out_size)
    return conv1x1_flops(in_channels, out_channels, out_size)


def proxy_params(in_channels: int, out_channels: int, bottleneck: bool) -> int:
    if bottleneck:
        mid = _mid(out_channels)
        return in_channels * mid + 2 * mid + mid * out_channels + 2 * out_channels
    return in_channels * out_channels + 2 * out_channels
