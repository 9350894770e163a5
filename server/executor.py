"""Block-wise execution of mixed-task batches over the shared universal blocks.

Every task keeps the same frozen convolutions; what differs per task is small: batch-norm
statistics (folded into a per-channel scale and shift), path weights, proxies and the classifier.
So one pass serves many *frames x tasks* rows:

* each universal block runs ONCE over every row whose plan keeps it, with each row's own affine
  gathered by task, and rows skip the blocks their plan dropped;
* the proxies of all the tasks that read one (node, stride), and all the classifiers, run as one
  segmented matrix product each (:mod:`server.kernels`), not as one small convolution per task.

Rows whose computation is provably identical are computed once: a row's *key* names its input frame
and every task-specific tensor that touched it.  So a frame sent to many tasks runs the stem
convolution once, and tasks that share frozen BN statistics share whole block prefixes, whether the
frame came alone or batched with other frames and single-task requests.

The result equals running each row alone through its task's :class:`TailoredNet` (the reference
definition) up to float rounding from the folding, which the tests bound at 1e-4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from blockstore import Backbone, Preprocess

from . import kernels
from .denseconv import DenseConvs
from .prepared import PreparedTask, bn_layout, shared_affines

__all__ = ["Executor", "PreparedTask", "executor_parallelism"]

# One image and the tasks that read it.  The image is either a float32 input [3, H, W], preprocessed,
# or a raw uint8 image [C, size, size] as Preprocess.to_uint8 gives it, which the executor normalises
# with its tasks' preprocessing (a frame's tasks share one), a batch at a time.
Frame = tuple[Tensor, Sequence[PreparedTask]]
_Run = tuple[PreparedTask, int, int]  # a task and its rows [start, stop)


def _zeros(like: Tensor, n: int, c: int, hw: Sequence[int]) -> Tensor:
    """Zeros [n, c, h, w], channels-last."""
    return like.new_zeros((n, hw[0], hw[1], c)).permute(0, 3, 1, 2)


class _Interner:
    """Maps hashable row keys to small ints, so keys stay cheap as they nest layer by layer."""

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}

    def __call__(self, key: Hashable) -> int:
        return self._ids.setdefault(key, len(self._ids))


def _dedup(keys: Sequence[int]) -> tuple[list[int], list[int]] | None:
    """Representative rows and, per row, the index of its representative; None when all differ."""
    first: dict[int, int] = {}
    reps: list[int] = []
    inverse = []
    for i, k in enumerate(keys):
        j = first.get(k)
        if j is None:
            j = first[k] = len(reps)
            reps.append(i)
        inverse.append(j)
    return None if len(reps) == len(keys) else (reps, inverse)


def _span(runs: Sequence[_Run]) -> tuple[list[int], int]:
    """The rows of ``runs`` and the row count of each."""
    rows = [i for _, a, b in runs for i in range(a, b)]
    return rows, len(rows)


class _Batch:
    """Per-pass state: each row's task and frame, the runs of rows per task, the key interner."""

    def __init__(self, ex: Executor, tasks: list[PreparedTask], frame_of_row: list[int]) -> None:
        self.ex, self.tasks, self.frame_of_row = ex, tasks, frame_of_row
        self.n = len(tasks)
        self.runs: list[_Run] = []
        for i, t in enumerate(tasks):
            if self.runs and self.runs[-1][0] is t:
                self.runs[-1] = (t, self.runs[-1][1], i + 1)
            else:
                self.runs.append((t, i, i + 1))
        self.intern = _Interner()
        self.bn_ids = [t.uid if t.affines is not None else 0 for t in tasks]
        self._pooled: dict[tuple[int, int], Tensor] = {}

    def index(self, rows: Sequence[int]) -> Tensor:
        return torch.tensor(rows, dtype=torch.long).to(self.ex.device, non_blocking=True)

    def take(self, t: Tensor, rows: Sequence[int]) -> Tensor:
        """``t[rows]``; a view when the rows are one contiguous run (the common case)."""
        if len(rows) == t.shape[0] and rows[0] == 0 and rows[-1] == len(rows) - 1:
            return t
        if rows[-1] - rows[0] + 1 == len(rows):
            return t[rows[0] : rows[-1] + 1]
        if t.dim() == 4:  # gathered as channels-last rows, so the result stays channels-last
            return t.permute(0, 2, 3, 1).index_select(0, self.index(rows)).permute(0, 3, 1, 2)
        return t.index_select(0, self.index(rows))

    def pooled(self, nodes: list[Tensor | None], src: int, stride: int) -> Tensor:
        """Node ``src`` max-pooled by ``stride`` for every row, once per pass: proxies of all tasks
        (and of several layers) reading the same node at the same stride share it."""
        key = (src, stride)
        out = self._pooled.get(key)
        if out is None:
            if stride == 1:
                out = nodes[src]
                assert out is not None
            else:
                # Max-pools by powers of two compose exactly (ceil_mode included), and the coarser
                # pool then reads a 4x smaller map.
                half = stride // 2 if stride % 2 == 0 else 1
                x = self.pooled(nodes, src, half)
                k = stride // half
                ceil = x.shape[-1] % k != 0 or x.shape[-2] % k != 0
                out = F.max_pool2d(x, k, k, ceil_mode=ceil)
            self._pooled[key] = out
        return out

    def affine(self, block: int, row_tasks: Sequence[PreparedTask]) -> Tensor:
        """Packed affines [rows or 1, 2, D] of ``block`` (0: the stem) for these rows' tasks."""
        shared = self.ex.shared[block]
        tables = [t.affines[block] if t.affines is not None else shared for t in row_tasks]
        first = tables[0]
        if all(tb is first for tb in tables):
            return first[None]
        slot: dict[int, int] = {}
        uniq: list[Tensor] = []
        idx = []
        for tb in tables:
            j = slot.get(id(tb))
            if j is None:
                j = slot[id(tb)] = len(uniq)
                uniq.append(tb)
            idx.append(j)
        return torch.stack(uniq).index_select(0, self.index(idx))


def executor_parallelism(workers: int = 0, threads: int = 0) -> tuple[int, int]:
    """Executor worker threads and torch intra-op threads for a serving process; 0 picks the default:
    one worker, and one intra-op thread per core but one (at least one).

    The event loop (HTTP, decoding, responses) needs a core of its own.  More workers were measured
    and not made the default.  With the executor process (server.engine), each worker has a lane of
    its own there, and two batches run side by side: on the 2-core machine, in a loop with no HTTP,
    two lanes of one intra-op thread ran 1.7-1.9x one lane (batches of 16), where two intra-op threads
    on one batch ran slower than one.  Served at C = 32 (bench/serve_bench.py --quick --tasks 20,1000
    --server-env NETTAILOR_EXECUTOR_WORKERS=2, interleaved with the default, two rounds), two lanes used
    1.65 cores against 1.44 but served 0.87-0.90x (N = 20) and 0.82-1.04x (N = 1,000), p99 up to 1.55x:
    the closed loop's 32 requests split into batches half as large (8.9 against 15.9 rows), each
    costlier per row, and the two lanes took the event loop's core.  With a batch running beside
    another only once it holds half a batch (server.batching), batches stayed full, and two workers
    served 0.88-1.07x one at N = 20 and 0.97-1.09x at N = 1,000 over four rounds: no gain.  In-process,
    two workers also served the same rate as one: every thread waits on the one GIL.

    What did pay is two batches in flight on the one lane (``NETTAILOR_EXECUTOR_PIPELINE``, default 2,
    server.pipes.Pipe): the runtime gives the batcher ``workers x pipeline`` threads, the next batch
    waits in the pipe while one computes, and batches stay full.  Side by side, four interleaved
    rounds of ``--quick --tasks 20,1000``: N = 20 1.07-1.31x, N = 1,000 0.95-1.08x, 1.58-1.73 cores
    against 1.35-1.48."""
    cores = os.cpu_count() or 1
    return workers or 1, threads or max(1, cores - 1)


class Executor:
    """Runs prepared tasks over the shared universal blocks.  Thread-safe: it only reads modules."""

    def __init__(self, backbone: Backbone, *, kernel: str | None = None, dense_convs: bool = True) -> None:
        """``kernel``: how the task-specific layers run, ``looped`` or ``grouped`` (see
        :mod:`server.kernels`); default the faster one for the backbone's device.  ``dense_convs``:
        frozen convolutions on tiny maps as matrix products (:mod:`server.denseconv`); False only
        to measure the difference (bench/executor_bench.py --dense on,off)."""
        self.backbone = backbone
        self.blocks = backbone.blocks
        self.num_layers = len(self.blocks)
        self.device = next(backbone.parameters()).device
        self.layout = bn_layout(backbone)
        # Channels-last rows are what the proxies' matrix products read, and on CPU oneDNN's
        # max-pool is several times faster on them.  The frozen weights are converted once, in place
        # (values, state dict bytes and backbone id unchanged), or every conv would convert them.
        backbone.net.to(memory_format=torch.channels_last)
        self.kernel = kernel or kernels.default_kernel(self.device)
        if self.kernel not in kernels.KERNELS:
            raise ValueError(f"kernel must be one of {kernels.KERNELS}, not {self.kernel!r}")
        with torch.inference_mode():
            self.shared = shared_affines(backbone)
        # The blocks' convolutions; tiny maps as one matrix product.
        self.conv: Callable[[nn.Conv2d, Tensor], Tensor] = DenseConvs() if dense_convs else nn.Conv2d.__call__

    # -- public --------------------------------------------------------------------------

    def close(self) -> None:
        """Nothing to release: the interface :class:`server.engine.ProcessExecutor` shares."""

    def run_frames(self, frames: Sequence[Frame]) -> list[list[Tensor]]:
        """Logits (CPU, float) for every (frame, task) pair, in order: all the frames, whatever their
        tasks, share one pass per input shape."""
        out: list[list[Tensor]] = [[] for _ in frames]
        with torch.inference_mode():
            xs = self._inputs(frames)
            groups: dict[tuple[int, ...], list[int]] = {}
            for f, x in enumerate(xs):
                groups.setdefault(tuple(x.shape), []).append(f)
            for fs in groups.values():
                pairs = [(t.uid, f, k, t) for f in fs for k, t in enumerate(frames[f][1])]
                pairs.sort(key=lambda p: p[0])  # stable: each task's rows become one run, frames in order
                slot: dict[int, int] = {}
                frame_of_row = [slot.setdefault(f, len(slot)) for _, f, _, _ in pairs]
                x = torch.stack([xs[f] for f in slot])
                logits = self._forward([p[3] for p in pairs], x, frame_of_row)
                for f in fs:
                    out[f] = [logits[0]] * len(frames[f][1])
                for (_, f, k, _), o in zip(pairs, logits):
                    out[f][k] = o
        return out

    def _inputs(self, frames: Sequence[Frame]) -> list[Tensor]:
        """Every frame's float input [3, H, W] on the device, moved one batch per (preprocessing, shape):
        raw uint8 frames are normalised there with their tasks' preprocessing, float frames kept.
        Normalising here, not on the event loop, saves the server a few torch calls per image, each of
        which lets go of its GIL (server.inference)."""
        groups: dict[tuple[Preprocess | None, tuple[int, ...]], list[int]] = {}
        for f, (x, tasks) in enumerate(frames):
            pre = tasks[0].preprocess if x.dtype == torch.uint8 else None
            groups.setdefault((pre, tuple(x.shape)), []).append(f)
        xs: dict[int, Tensor] = {}
        for (pre, _), fs in groups.items():
            batch = torch.stack([frames[f][0] for f in fs]).to(self.device, non_blocking=True)
            xs.update(zip(fs, pre.normalize(batch) if pre is not None else batch))
        return [xs[f] for f in range(len(frames))]

    def run(self, items: Sequence[tuple[PreparedTask, Tensor]]) -> list[Tensor]:
        """Logits for each ``(task, x)``; samples of different tasks share each block call."""
        return [o for (o,) in self.run_frames([(x, (t,)) for t, x in items])]

    def run_multi(self, x: Tensor, tasks: Sequence[PreparedTask]) -> list[Tensor]:
        """One image ``x`` [3,H,W] through several tasks; identical work is done once."""
        return self.run_frames([(x, tasks)])[0]

    # -- core ----------------------------------------------------------------------------

    def _forward(self, tasks: list[PreparedTask], x: Tensor, frame_of_row: list[int]) -> list[Tensor]:
        b = _Batch(self, tasks, frame_of_row)
        stem, keys = self._stem(b, x.contiguous(memory_format=torch.channels_last))
        nodes: list[Tensor | None] = [stem]
        node_keys: list[list[int]] = [keys]
        for l in range(1, self.num_layers + 1):
            node, keys = self._layer(b, l, nodes, node_keys)
            nodes.append(node)
            node_keys.append(keys)
        last = nodes[-1]
        assert last is not None
        feats = torch.flatten(F.adaptive_avg_pool2d(last, 1), 1).contiguous()
        return kernels.heads(feats, b.runs, self.kernel)

    def _bn(self, y: Tensor, affine: Tensor, block: int, name: str) -> Tensor:
        cols = self.layout[block][name]
        return torch.addcmul(affine[:, 1, cols, None, None], y, affine[:, 0, cols, None, None])

    def _stem(self, b: _Batch, x: Tensor) -> tuple[Tensor, list[int]]:
        net = self.backbone.net
        y = net.conv1(x)  # once per frame
        keys = [b.intern(("stem", f, bn)) for f, bn in zip(b.frame_of_row, b.bn_ids)]
        d = _dedup(keys)
        reps = d[0] if d else list(range(b.n))
        frames = [b.frame_of_row[i] for i in reps]
        # maxpool(relu(a * y + c)) is relu(a * maxpool(y) + c) where a >= 0, and relu(a * minpool(y) + c)
        # where a < 0, exactly (both are monotonic in y): the BN and ReLU then run on the pooled map (4x
        # smaller where the stem has a pool), and the pool once per frame, not once per row.
        affine = b.affine(0, [b.tasks[i] for i in reps])
        pooled = b.take(net.maxpool(y), frames)
        neg = affine[:, 0, self.layout[0]["bn1"], None, None] < 0
        if y.device.type != "cpu" or bool(neg.any()):  # on a GPU, both pools: asking would wait for it
            pooled = torch.where(neg, b.take(net.maxpool(y.neg()), frames).neg_(), pooled)
        z = F.relu_(self._bn(pooled, affine, 0, "bn1"))
        return (b.take(z, d[1]) if d else z), keys

    def _layer(self, b: _Batch, l: int, nodes: list[Tensor | None],
               node_keys: list[list[int]]) -> tuple[Tensor | None, list[int]]:
        alive = [r for r in b.runs if r[0].plan.layers[l - 1].num_paths]
        if not alive:
            return None, [-1] * b.n
        prev = nodes[l - 1]
        # Universal block over every row whose plan keeps it, deduplicated on (input, BN statistics).
        brows, nb = _span([r for r in alive if r[0].plan.layers[l - 1].block])
        bkey = [-1] * b.n
        acc: Tensor | None = None
        if nb:
            assert prev is not None
            for i in brows:
                bkey[i] = b.intern(("blk", l, node_keys[l - 1][i], b.bn_ids[i]))
            d = _dedup([bkey[i] for i in brows])
            reps = [brows[j] for j in d[0]] if d else brows
            y = self._block(b, l, b.take(prev, reps), [b.tasks[i] for i in reps])
            acc = b.take(y, d[1]) if d else y
        has_proxies = any(r[0].plan.layers[l - 1].proxies for r in alive)
        if not has_proxies and nb == b.n:
            # ReLU(block) exactly: the softmax of one path logit is 1.
            assert acc is not None
            return F.relu_(acc), bkey
        if nb:
            assert acc is not None
            acc = self._block_path(b, l, acc, brows)
        if has_proxies:
            acc = self._proxy_paths(b, l, nodes, alive, acc)
        assert acc is not None
        return F.relu_(acc), self._mix_keys(b, l, alive, bkey, node_keys)

    @staticmethod
    def _block_path(b: _Batch, l: int, block_out: Tensor, brows: list[int]) -> Tensor:
        """``alpha_G * block`` for the rows that keep the block, zero for the others: the mix's start,
        channels-last and contiguous, so that the proxies can be added in place row by row."""
        w = [b.tasks[i].block_weight[l] for i in brows]
        if any(v != 1.0 for v in w):
            block_out = block_out * torch.tensor(w, dtype=block_out.dtype).to(block_out.device).view(-1, 1, 1, 1)
        if len(brows) == b.n:
            return block_out.contiguous(memory_format=torch.channels_last)
        acc = _zeros(block_out, b.n, block_out.shape[1], block_out.shape[2:])
        acc.index_copy_(0, b.index(brows), block_out)
        return acc

    def _proxy_paths(self, b: _Batch, l: int, nodes: list[Tensor | None], alive: list[_Run],
                     acc: Tensor | None) -> Tensor:
        """Add every kept proxy's output, and the layer's summed proxy bias, into ``acc`` (in place;
        None: no row keeps the block, and the mix starts from zero)."""
        sources: dict[int, int] = {}
        for t, _, _ in alive:
            for p in t.plan.layers[l - 1].proxies:
                sources.setdefault(p.src, p.stride)
        out: Tensor | None = None
        for src, stride in sources.items():
            x = b.pooled(nodes, src, stride)
            if out is None:
                if acc is None:
                    acc = _zeros(x, b.n, self.backbone.spec.nodes[l].channels, x.shape[2:])
                out = acc.permute(0, 2, 3, 1)  # channels-last rows [B, h, w, C], contiguous
            runs = [r for r in alive if (l, src) in r[0].proxies]
            kernels.add_proxies(out, x.permute(0, 2, 3, 1), runs, (l, src), self.kernel)
        assert out is not None and acc is not None
        kernels.add_layer_bias(out, alive, l, self.kernel)
        return acc

    @staticmethod
    def _mix_keys(b: _Batch, l: int, alive: list[_Run], bkey: list[int], node_keys: list[list[int]]) -> list[int]:
        keys = [-1] * b.n
        for t, a, c in alive:
            lp = t.plan.layers[l - 1]
            if lp.block and not lp.proxies:
                keys[a:c] = bkey[a:c]
                continue
            for i in range(a, c):
                keys[i] = b.intern(("mix", l, t.uid, bkey[i], tuple(node_keys[p.src][i] for p in lp.proxies)))
        return keys

    def _block(self, b: _Batch, l: int, x: Tensor, row_tasks: list[PreparedTask]) -> Tensor:
        blk = self.blocks[l - 1]
        a = b.affine(l, row_tasks)

        def bn(y: Tensor, name: str) -> Tensor:
            return self._bn(y, a, l, name)

        conv = self.conv
        if isinstance(blk, BasicBlock):
            out = F.relu_(bn(conv(blk.conv1, x), "bn1"))
            out = bn(conv(blk.conv2, out), "bn2")
        elif isinstance(blk, Bottleneck):
            out = F.relu_(bn(conv(blk.conv1, x), "bn1"))
            out = F.relu_(bn(conv(blk.conv2, out), "bn2"))
            out = bn(conv(blk.conv3, out), "bn3")
        else:  # pragma: no cover - Backbone only builds these
            raise TypeError(type(blk).__name__)
        identity = bn(conv(blk.downsample[0], x), "downsample_1") if blk.downsample is not None else x
        return out.add_(identity)  # the residual sum: the node's ReLU comes after the path mix
