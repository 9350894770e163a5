"""Frozen convolutions on tiny feature maps, run as one matrix product.

At the serving resolutions of this project (32 px with the ImageNet stem), the last stages of a
ResNet see feature maps of 2x2 and 1x1.  A 3x3 convolution with padding 1 on a 1x1 map reads one
of its nine taps: oneDNN still computes all nine (im2col), so it did 9x the arithmetic, and was
measured at 3.3 ms against 0.18 ms for the equivalent matrix product (512 channels, 16 rows, one
core).  On a 2x2 map the convolution is 1.85 ms against 0.65 ms.

A convolution is linear in its input, so for a fixed input size ``h x w`` it *is* a matrix:
``M[(y, x, c_in), (y', x', c_out)]``, obtained exactly by running the convolution once on the
identity basis.  The matrix is used where it is small: at most ``MAX_DENSE_RATIO`` times the
convolution's own weight (so a 1x1 map's matrix is the centre tap, and a 2x2 map's is 16/9 of the
weight).  Rows are channels-last, so the input and the output are views, not copies.

On the CPU, a matrix larger than :data:`TRANSPOSED_BYTES` and at least :data:`TRANSPOSED_MIN_WIDTH`
columns wide is kept transposed, and the product runs as ``(M^T x^T)^T``.  With a batch's 16 rows,
MKL's ``x @ M`` streams such an ``M`` slower when it is not in the cache: a 1024 x 1024 matrix (a
3x3 convolution of 256 channels on a 2x2 map), one of 12 used in turn, took 1,024 us against 675 us
transposed, copies included (``bench/dense_forms.py``, one thread, 16 rows,
``bench/results/dense_forms.json``).  The eight shapes this rule keeps transposed ran at 0.61-0.96x;
a 4096 x 256 matrix (too narrow) at 1.15x, and those below 2.5 MiB at 0.83-1.47x.  In the executor's
own batches (Zipf over 20 tasks, batches of 16, torch's profiler) the 1024 x 1024 product went from
872 to 537 us a call.

The result equals the convolution up to float rounding (the executor's equivalence tests bound the
whole network at 1e-4).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor, nn

__all__ = ["MAX_DENSE_RATIO", "TRANSPOSED_BYTES", "TRANSPOSED_MIN_WIDTH", "DenseConvs", "product",
           "transposed_on_cpu"]

MAX_DENSE_RATIO = 2.0
TRANSPOSED_BYTES = 5 << 19  # 2.5 MiB: larger CPU matrices are kept transposed (see the module doc) ...
TRANSPOSED_MIN_WIDTH = 512  # ... unless narrower than this


class DenseConvs:
    """Per (convolution, input size): its matrix and whether it is kept transposed, or None where the
    convolution itself is cheaper.

    Built on first use (thread-safe) from the frozen weights; never changes after."""

    def __init__(self) -> None:
        self._maps: dict[tuple[int, int, int], tuple[Tensor, bool] | None] = {}
        self._lock = threading.Lock()

    def __call__(self, conv: nn.Conv2d, x: Tensor) -> Tensor:
        """``conv(x)`` for channels-last ``x`` [B, C, h, w]; channels-last out."""
        b, c, h, w = x.shape
        key = (id(conv), h, w)
        m = self._maps.get(key, ...)
        if m is ...:
            with self._lock:
                m = self._maps.get(key, ...)
                if m is ...:
                    m = self._maps[key] = _dense(conv, c, h, w, x)
        if m is None or not x.permute(0, 2, 3, 1).is_contiguous():
            return conv(x)
        oh, ow, cout = _out_size(conv, h, w)
        y = product(x.permute(0, 2, 3, 1).reshape(b, h * w * c), *m)
        if conv.bias is not None:  # pragma: no cover - ResNet convolutions have none
            y = y.view(b, oh * ow, cout).add_(conv.bias)
        return y.view(b, oh, ow, cout).permute(0, 3, 1, 2)


def _out_size(conv: nn.Conv2d, h: int, w: int) -> tuple[int, int, int]:
    def one(n: int, k: int, s: int, p: int, d: int) -> int:
        return (n + 2 * p - d * (k - 1) - 1) // s + 1

    assert isinstance(conv.padding, tuple)
    return (one(h, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]),
            one(w, conv.kernel_size[1], conv.stride[1], conv.padding[1], conv.dilation[1]), conv.out_channels)


def _dense(conv: nn.Conv2d, c: int, h: int, w: int, like: Tensor) -> tuple[Tensor, bool] | None:
    """The matrix [h*w*c, oh*ow*cout] of ``conv`` on h x w inputs (transposed, and True, where it is
    large and on the CPU), or None when it would be large next to the convolution's weight."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return None
    oh, ow, cout = _out_size(conv, h, w)
    if h * w * c * oh * ow * cout > MAX_DENSE_RATIO * conv.weight.numel():
        return None
    n = h * w * c
    with torch.inference_mode():
        # Basis row (y, x, ch) is the input with a one at that position: channels-last order.
        basis = torch.eye(n, dtype=like.dtype, device=like.device).view(n, h, w, c).permute(0, 3, 1, 2)
        out = nn.functional.conv2d(basis, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        mat = out.permute(0, 2, 3, 1).reshape(n, oh * ow * cout)
        if like.device.type == "cpu" and transposed_on_cpu(mat.shape[0], mat.shape[1], mat.element_size()):
            return mat.t().contiguous(), True
        return mat.contiguous(), False


def product(rows: Tensor, mat: Tensor, transposed: bool) -> Tensor:
    """``rows @ M`` [B, N], contiguous, with ``mat`` either ``M`` [K, N] or, ``transposed``, ``M^T`` [N, K]."""
    return torch.mm(mat, rows.t().contiguous()).t().contiguous() if transposed else rows @ mat


def transposed_on_cpu(k: int, n: int, itemsize: int = 4) -> bool:
    """Whether a matrix ``[k, n]`` (float32 unless ``itemsize`` says otherwise) is kept transposed on the
    CPU (see the module doc)."""
    return k * n * itemsize > TRANSPOSED_BYTES and n >= TRANSPOSED_MIN_WIDTH
