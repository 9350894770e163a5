"""Block-wise execution of mixed-task batches over the shared universal blocks.

Every task keeps the same frozen convolutions; what differs per task is small: batch-norm
statistics (folded here into a per-channel scale and shift), path weights, proxies and the
classifier.  So a batch that mixes tasks runs each universal block ONCE over every sample whose
plan keeps it, with each sample's own affine gathered by task; proxies and heads run per task group,
and samples skip the blocks their plan dropped.

Rows whose computation is provably identical are computed once: a row's *key* names its input and
every task-specific tensor that touched it.  For one image sent to many tasks (``run_multi``) the
stem convolution runs once, and tasks that share frozen BN statistics share whole block prefixes.

The result equals running each sample alone through its task's :class:`TailoredNet` (the reference
definition) up to float rounding from the BN folding, which the tests bound at 1e-4.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.resnet import BasicBlock, Bottleneck

from blockstore import Backbone
from blockstore.frozen import block_bns

from .prepared import Affine, FoldedProxy, PreparedTask, fold_bn

__all__ = ["Executor", "PreparedTask"]


def _shared_affines(backbone: Backbone) -> dict[str, Affine]:
    net = backbone.net
    bn1 = net.bn1
    out = {"stem/bn1": fold_bn(bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, bn1.eps)}
    for l, blk in enumerate(backbone.blocks, start=1):
        for name, bn in block_bns(blk).items():
            assert bn.running_mean is not None and bn.running_var is not None
            out[f"{l}/{name}"] = fold_bn(bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
    return out


def _take(t: Tensor, rows: Sequence[int]) -> Tensor:
    """``t[rows]``, as a view when the rows are a contiguous run (the common case: run() sorts
    rows by task, so each task's rows are one run)."""
    if len(rows) == t.shape[0] and rows[0] == 0 and rows[-1] == len(rows) - 1:
        return t
    if rows[-1] - rows[0] + 1 == len(rows):
        return t[rows[0] : rows[-1] + 1]
    return t[list(rows)]


def _put(out: Tensor, rows: Sequence[int], value: Tensor) -> None:
    if rows[-1] - rows[0] + 1 == len(rows):
        out[rows[0] : rows[-1] + 1] = value
    else:
        out[list(rows)] = value


def _run_proxy(fp: FoldedProxy, x: Tensor) -> Tensor:
    """The proxy's convolutions on an input already max-pooled by ``fp.stride``."""
    for i, (w, b) in enumerate(fp.stages):
        if i:
            x = F.relu(x)
        x = F.conv2d(x, w, b)
    return x

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


class _Batch:
    """Per-batch state: the tasks of each row and their stacked affines."""

    def __init__(self, executor: Executor, tasks: Sequence[PreparedTask]) -> None:
        self.ex = executor
        self.tasks = list(tasks)
        self.intern = _Interner()
        self._pooled: dict[tuple[int, int], Tensor] = {}

    def pooled(self, nodes: list[Tensor | None], src: int, stride: int) -> Tensor:
        """Node ``src`` max-pooled by ``stride`` for every row, once per batch: proxies of all tasks
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

    def bn_id(self, row_tasks: Sequence[PreparedTask]) -> list[int]:
        return [t.uid if t.affines is not None else 0 for t in row_tasks]

    def affine(self, key: str, row_tasks: Sequence[PreparedTask]) -> Affine:
        """Per-row scale and shift, shaped to broadcast over [rows, C, H, W]."""
        tables = [(t.affines or self.ex.shared)[key] for t in row_tasks]
        if all(tb is tables[0] for tb in tables):
            s, b = tables[0]
            return s.view(1, -1, 1, 1), b.view(1, -1, 1, 1)
        scale = torch.stack([tb[0] for tb in tables]).unsqueeze(-1).unsqueeze(-1)
        shift = torch.stack([tb[1] for tb in tables]).unsqueeze(-1).unsqueeze(-1)
        return scale, shift


class Executor:
    """Runs prepared tasks over the shared universal blocks.  Thread-safe: it only reads modules."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.blocks = backbone.blocks
        self.num_layers = len(self.blocks)
        with torch.inference_mode():
            self.shared = _shared_affines(backbone)

    # -- public --------------------------------------------------------------------------

    def run(self, items: Sequence[tuple[PreparedTask, Tensor]]) -> list[Tensor]:
        """Logits (CPU, float) for each ``(task, x)``; samples of different tasks share each block call."""
        out: list[Tensor | None] = [None] * len(items)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, x) in enumerate(items):
            groups.setdefault(tuple(x.shape), []).append(i)
        dev = next(self.backbone.parameters()).device
        with torch.inference_mode():
            for rows in groups.values():
                rows.sort(key=lambda i: items[i][0].uid)  # each task's rows become one contiguous run
                tasks = [items[i][0] for i in rows]
                x = torch.stack([items[i][1] for i in rows]).to(dev, non_blocking=True)
                logits = self._forward(tasks, x, list(range(len(rows))))
                for j, i in enumerate(rows):
                    out[i] = logits[j]
        return out  # type: ignore[return-value]

    def run_multi(self, x: Tensor, tasks: Sequence[PreparedTask]) -> list[Tensor]:
        """One image ``x`` [3,H,W] through several tasks; identical work is done once."""
        dev = next(self.backbone.parameters()).device
        with torch.inference_mode():
            xs = x.to(dev)[None].expand(len(tasks), *x.shape)
            return self._forward(list(tasks), xs, [0] * len(tasks))

    # -- core ----------------------------------------------------------------------------

    def _forward(self, tasks: list[PreparedTask], x: Tensor, in_keys: list[int]) -> list[Tensor]:
        b = _Batch(self, tasks)
        stem, keys = self._stem(b, x, in_keys)
        nodes: list[Tensor | None] = [stem]
        node_keys: list[list[int]] = [keys]
        all_rows = list(range(len(tasks)))
        for l in range(1, self.num_layers + 1):
            node, keys = self._layer(b, l, nodes, node_keys, all_rows)
            nodes.append(node)
            node_keys.append(keys)
        last = nodes[-1]
        assert last is not None
        feats = torch.flatten(F.adaptive_avg_pool2d(last, 1), 1)
        out: list[Tensor] = [feats[0]] * len(tasks)
        for rows, t in _by_task(tasks, all_rows):
            logits = F.linear(_take(feats, rows), *t.head)
            for j, i in enumerate(rows):
                out[i] = logits[j].float().cpu()
        return out

    def _stem(self, b: _Batch, x: Tensor, in_keys: list[int]) -> tuple[Tensor, list[int]]:
        net = self.backbone.net
        # The convolution depends on the input only: run it once per distinct input.
        d = _dedup(in_keys)
        y = net.conv1(x[d[0]] if d else x)
        if d:
            y = y[d[1]]
        keys = [b.intern(("stem", k, bn)) for k, bn in zip(in_keys, b.bn_id(b.tasks))]
        d = _dedup(keys)
        rows = d[0] if d else list(range(len(keys)))
        rt = [b.tasks[i] for i in rows]
        s, sh = b.affine("stem/bn1", rt)
        z = net.maxpool(F.relu(torch.addcmul(sh, y[rows] if d else y, s)))
        return (z[d[1]] if d else z), keys

    def _layer(self, b: _Batch, l: int, nodes: list[Tensor | None], node_keys: list[list[int]],
               all_rows: list[int]) -> tuple[Tensor | None, list[int]]:
        tasks = b.tasks
        alive = [i for i in all_rows if tasks[i].plan.layers[l - 1].num_paths]
        if not alive:
            return None, [-1] * len(tasks)
        prev = nodes[l - 1]
        keys = [-1] * len(tasks)
        # Universal block over every row whose plan keeps it, deduplicated on (input, BN statistics).
        brows = [i for i in alive if tasks[i].plan.layers[l - 1].block]
        block_out: Tensor | None = None
        if brows:
            assert prev is not None
            bkeys = [b.intern(("blk", l, node_keys[l - 1][i], bn))
                     for i, bn in zip(brows, b.bn_id([tasks[i] for i in brows]))]
            d = _dedup(bkeys)
            reps = [brows[j] for j in d[0]] if d else brows
            xin = _take(prev, reps)
            y = self._block(b, l, xin, [tasks[i] for i in reps])
            block_out = y[d[1]] if d else y
        # Mix paths per task group, then the node's one ReLU.  A layer that keeps only its block is
        # ReLU(block) exactly (the softmax of one logit is 1).
        only_block = all(not tasks[i].plan.layers[l - 1].proxies for i in alive)
        if only_block and len(brows) == len(tasks):
            assert block_out is not None
            return F.relu(block_out), bkeys
        bpos = {i: j for j, i in enumerate(brows)}
        out: Tensor | None = None
        for rows, t in _by_task(tasks, alive):
            lp = t.plan.layers[l - 1]
            w = t.weights[l]
            terms = []
            if lp.block:
                assert block_out is not None
                terms.append(_take(block_out, [bpos[i] for i in rows]))
            for p in lp.proxies:
                terms.append(_run_proxy(t.proxies[(l, p.src)], _take(b.pooled(nodes, p.src, p.stride), rows)))
            acc = terms[0] * w[0]
            for k in range(1, len(terms)):
                acc = acc + terms[k] * w[k]
            if out is None:
                out = (acc.new_empty if len(alive) == len(tasks) else acc.new_zeros)((len(tasks), *acc.shape[1:]))
            _put(out, rows, F.relu(acc))
            for i in rows:
                bk = bkeys[bpos[i]] if lp.block else -1
                if lp.block and not lp.proxies:
                    keys[i] = bk
                else:
                    keys[i] = b.intern(("mix", l, t.uid, bk, tuple(node_keys[p.src][i] for p in lp.proxies)))
        return out, keys

    def _block(self, b: _Batch, l: int, x: Tensor, row_tasks: list[PreparedTask]) -> Tensor:
        blk = self.blocks[l - 1]

        def bn(y: Tensor, name: str) -> Tensor:
            s, sh = b.affine(f"{l}/{name}", row_tasks)
            return torch.addcmul(sh, y, s)

        if isinstance(blk, BasicBlock):
            out = F.relu(bn(blk.conv1(x), "bn1"))
            out = bn(blk.conv2(out), "bn2")
        elif isinstance(blk, Bottleneck):
            out = F.relu(bn(blk.conv1(x), "bn1"))
            out = F.relu(bn(blk.conv2(out), "bn2"))
            out = bn(blk.conv3(out), "bn3")
        else:  # pragma: no cover - Backbone only builds these
            raise TypeError(type(blk).__name__)
        identity = bn(blk.downsample[0](x), "downsample_1") if blk.downsample is not None else x
        return out + identity  # the residual sum: the node's ReLU comes after the path mix


def _by_task(tasks: Sequence[PreparedTask], rows: Sequence[int]) -> list[tuple[list[int], PreparedTask]]:
    groups: dict[int, tuple[list[int], PreparedTask]] = {}
    for i in rows:
        groups.setdefault(tasks[i].uid, ([], tasks[i]))[0].append(i)
    return list(groups.values())
