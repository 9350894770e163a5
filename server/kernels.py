"""Cross-task kernels: the task-specific layers of many tasks as a few batched operations.

In the manner of Punica's and S-LoRA's batched adapter kernels, the rows of a mixed batch are sorted
so that each task's rows form one *run*, and a 1x1 convolution is a matrix product over
channels-last rows.  So every proxy that reads one (node, stride), whatever its task, and every
task's classifier, is one segmented matrix product: run g times task g's matrix, written straight
into the node's accumulator.  Two implementations, chosen per device by measurement:

* ``grouped`` (CUDA): gather the rows, stack the tasks' matrices, one ``torch._grouped_mm`` per
  source node, one ``index_add_`` into the node: a few kernel launches whatever the task count.
* ``looped`` (CPU): one ``addmm_`` per run, in place on the run's slice of the accumulator.  On the
  CPU ``_grouped_mm`` is itself a loop of matrix products, so stacking the weights (a copy of every
  task's matrices per batch) and scattering the result back only add memory traffic: on the 2-core
  CPU the looped form was the faster one (bench/executor_bench.py --kernels).

Both replace what the executor did before: one small ``conv2d`` per task and proxy (2-4x slower at
these shapes, mostly oneDNN set-up for each new row count) followed by per-task mix, ReLU and copy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .prepared import PreparedTask

__all__ = ["KERNELS", "add_layer_bias", "add_proxies", "default_kernel", "grouped_supported", "heads",
           "segment_mm"]

log = logging.getLogger(__name__)

KERNELS = ("looped", "grouped")
Run = tuple["PreparedTask", int, int]  # a task and its rows [start, stop)
_FEW_RUNS = 2  # up to this many runs, add_layer_bias adds run by run


def _looped_mm(x: Tensor, mats: Sequence[Tensor], rows: Sequence[int]) -> Tensor:
    out = x.new_empty(x.shape[0], mats[0].shape[1])
    at = 0
    for w, n in zip(mats, rows):
        torch.mm(x[at : at + n], w, out=out[at : at + n])
        at += n
    return out


@lru_cache(maxsize=8)
def grouped_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs (and is right) for ``dtype`` on ``device``: probed once."""
    grouped = getattr(torch, "_grouped_mm", None)
    if grouped is None:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(7, 8, generator=g).to(device, dtype)
        w = torch.randn(3, 8, 16, generator=g).to(device, dtype)
        rows = [2, 1, 4]
        offs = torch.tensor(rows, device=device).cumsum(0).to(torch.int32)
        ok = torch.allclose(grouped(x, w, offs=offs).float(), _looped_mm(x, list(w), rows).float(), atol=1e-3)
    except Exception as e:  # not built for this device or dtype
        log.info("torch._grouped_mm is unavailable on %s for %s (%s): segments run one by one", device, dtype, e)
        return False
    return bool(ok)


def default_kernel(device: torch.device) -> str:
    """``grouped`` where a real grouped kernel exists (CUDA), else ``looped`` (see the module doc)."""
    return "grouped" if device.type == "cuda" and grouped_supported(device, torch.float32) else "looped"


def segment_mm(x: Tensor, mats: Sequence[Tensor], rows: Sequence[int]) -> Tensor:
    """``x`` [sum(rows), K] split into consecutive segments of ``rows``; segment g times ``mats[g]`` [K, N_g].

    Matrices of different widths are zero-padded to the widest, so each output row may be wider than
    its own matrix: the caller slices it."""
    if len(mats) == 1:
        return x @ mats[0]
    width = max(w.shape[1] for w in mats)
    # The grouped kernel wants 16-byte aligned strides (4 floats), as every ResNet width is.
    if x.shape[1] % 4 == 0 and grouped_supported(x.device, x.dtype):
        wide = -(-width // 4) * 4
        stacked = torch.stack([w if w.shape[1] == wide else F.pad(w, (0, wide - w.shape[1])) for w in mats])
        offs = torch.tensor(rows, dtype=torch.int32).cumsum(0, dtype=torch.int32).to(x.device, non_blocking=True)
        y = torch._grouped_mm(x.contiguous(), stacked, offs=offs)
        return y if wide == width else y[:, :width]
    if any(w.shape[1] != width for w in mats):
        mats = [F.pad(w, (0, width - w.shape[1])) for w in mats]
    return _looped_mm(x, mats, rows)


def _rows(runs: Sequence[Run], device: torch.device) -> tuple[slice | Tensor, int]:
    """The rows of ``runs`` as a slice when contiguous, else an index tensor; and their count."""
    n = sum(c - a for _, a, c in runs)
    if runs[-1][2] - runs[0][1] == n:
        return slice(runs[0][1], runs[-1][2]), n
    rows = [i for _, a, c in runs for i in range(a, c)]
    return torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True), n


def _per_run(vectors: Sequence[Tensor], runs: Sequence[Run]) -> Tensor:
    """``vectors[g]`` repeated once per row of run g: [rows, D]."""
    counts = [c - a for _, a, c in runs]
    if len(vectors) == 1:
        return vectors[0].expand(counts[0], -1)
    rep = torch.tensor(counts).to(vectors[0].device, non_blocking=True)
    return torch.stack(list(vectors)).repeat_interleave(rep, dim=0, output_size=sum(counts))


def _add_rows(out: Tensor, rows: slice | Tensor, value: Tensor) -> None:
    if isinstance(rows, slice):
        out[rows] += value
    else:
        out.index_add_(0, rows, value.expand(rows.shape[0], *out.shape[1:]))


def add_proxies(out: Tensor, x: Tensor, runs: Sequence[Run], key: tuple[int, int], kernel: str) -> None:
    """``out[rows of run] += A(x[rows of run])`` with each run's task's proxy ``key`` = (layer, source).

    ``out`` [B, h, w, C] and ``x`` [B, h, w, Cin] are channels-last rows (``out`` contiguous): ``x`` is
    the source node, already max-pooled to the layer's resolution."""
    cin, cout = x.shape[-1], out.shape[-1]
    if kernel == "looped":
        for t, a, c in runs:
            fp = t.proxies[key]
            xs = x[a:c].reshape(-1, cin)
            if fp.hidden_bias is not None:  # bottleneck proxy: bias and ReLU between its two matrices
                xs = F.relu_(torch.addmm(fp.hidden_bias, xs, fp.mats[0]))
            out[a:c].view(-1, cout).addmm_(xs, fp.mats[-1])
        return
    rows, n = _rows(runs, out.device)
    h, w = x.shape[1], x.shape[2]
    xs = x[rows].reshape(n * h * w, cin)
    seg = [(c - a) * h * w for _, a, c in runs]
    fps = [t.proxies[key] for t, _, _ in runs]
    y = segment_mm(xs, [fp.mats[0] for fp in fps], seg)
    if fps[0].hidden_bias is not None:
        hb = _per_run([fp.hidden_bias for fp in fps], runs)  # type: ignore[misc]
        y = F.relu_(y.reshape(n, h * w, -1) + hb[:, None, :]).view(n * h * w, -1)
        y = segment_mm(y, [fp.mats[1] for fp in fps], seg)
    _add_rows(out, rows, y.reshape(n, h, w, cout))


def add_layer_bias(out: Tensor, runs: Sequence[Run], layer: int, kernel: str) -> None:
    """``out[rows of run] += the summed output bias of the task's proxies into ``layer``."""
    runs = [r for r in runs if layer in r[0].layer_bias]
    if not runs:
        return
    if kernel == "looped" and len(runs) <= _FEW_RUNS:
        for t, a, c in runs:
            out[a:c] += t.layer_bias[layer]
        return
    # One add for many runs, whatever the kernel: an in-place add of a slice costs about 3 us a call
    # on the CPU, where stacking 20 runs' biases and adding them once took 14-22 us in all.
    rows, _ = _rows(runs, out.device)
    _add_rows(out, rows, _per_run([t.layer_bias[layer] for t, _, _ in runs], runs)[:, None, None, :])


def heads(feats: Tensor, runs: Sequence[Run], kernel: str) -> list[Tensor]:
    """Each row's logits (CPU, float, sized to its task's classes) from the pooled features [B, C]."""
    if kernel == "looped" or len(runs) == 1:
        out: list[Tensor] = []
        for t, a, c in runs:
            logits = torch.addmm(t.head[1], feats[a:c], t.head[0]).float().cpu()
            out += list(logits)
        return out
    y = segment_mm(feats, [t.head[0] for t, _, _ in runs], [c - a for _, a, c in runs])
    width = y.shape[1]
    y = y + _per_run([F.pad(t.head[1], (0, width - t.num_classes)) for t, _, _ in runs], runs)
    logits = y.float().cpu()
    return [logits[i, : t.num_classes] for t, a, c in runs for i in range(a, c)]
