"""server.denseconv: a frozen convolution on a tiny map equals its matrix product, and the matrix is
only used where it is small."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from server.denseconv import DenseConvs, transposed_on_cpu


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "pad", "hw", "dense"), [
    (8, 16, 3, 1, 1, 1, True),   # 3x3 on 1x1: the centre tap
    (8, 16, 3, 1, 1, 2, True),   # 3x3 on 2x2: 16/9 of the weight
    (8, 16, 3, 2, 1, 2, True),   # strided, 2x2 -> 1x1 (a ResNet stage's first block)
    (8, 16, 1, 2, 0, 2, False),  # the downsample shortcut: its matrix would be 4x its weight
    (8, 16, 3, 1, 1, 4, False),  # 4x4: the matrix would be 256/9 of the weight
])
def test_dense_equals_the_convolution(cin, cout, k, stride, pad, hw, dense) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False).eval()
    x = torch.randn(5, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    convs = DenseConvs()
    with torch.inference_mode():
        got, want = convs(conv, x), conv(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert got.permute(0, 2, 3, 1).is_contiguous()  # channels-last out, as the executor expects
    assert (convs._maps[(id(conv), hw, hw)] is not None) == dense


def test_a_non_channels_last_input_takes_the_convolution() -> None:
    conv = nn.Conv2d(4, 4, 3, 1, 1, bias=False).eval()
    x = torch.randn(3, 8, 1, 1)[:, ::2]
    with torch.inference_mode():
        assert torch.allclose(DenseConvs()(conv, x), conv(x), atol=1e-5)


@pytest.mark.parametrize(("cin", "hw", "transposed"), [
    (256, 2, True),   # a 1024 x 1024 matrix (4 MiB): kept transposed on the CPU
    (128, 2, False),  # 512 x 512 (1 MiB): as it is
])
def test_a_large_matrix_is_kept_transposed_and_gives_the_same_result(cin, hw, transposed) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cin, 3, 1, 1, bias=False).eval()
    x = torch.randn(16, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    convs = DenseConvs()
    with torch.inference_mode():
        got, want = convs(conv, x), conv(x)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert got.permute(0, 2, 3, 1).is_contiguous()
    m = convs._maps[(id(conv), hw, hw)]
    assert m is not None and m[1] == transposed
    assert transposed_on_cpu(*(m[0].shape[::-1] if m[1] else m[0].shape)) == transposed
