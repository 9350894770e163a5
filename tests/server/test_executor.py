"""Block-wise mixed-task execution equals running each sample alone through its TailoredNet.

Every case runs with both cross-task kernels (``looped``, the CPU default, and ``grouped``, the CUDA
default, which runs on the CPU too), over plans with dropped blocks, dead nodes, frozen and per-task
BN, basic and bottleneck proxies, on the tiny ResNet-10 and on a ResNet-50-shaped net at 32 px.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Callable, Iterator

import pytest
import torch

from blockstore import BackboneConfig, LayerPlan, Plan, Preprocess, TailoredNet, TaskPack
from blockstore.testing import random_plan
from server.executor import Executor, PreparedTask
from server.kernels import KERNELS
from tests.conftest import make_backbone, randomize


def _plans(spec, bottleneck: bool) -> list[Plan]:
    full = Plan.full(spec, 3, bottleneck=bottleneck)
    layers = list(full.layers)
    # Drops block 2 (node 2 fed by one proxy), keeps only block 4, frozen BN statistics.
    pruned = list(layers)
    pruned[1] = LayerPlan(False, layers[1].proxies[:1])
    pruned[3] = LayerPlan(True, ())
    # Node 2 dead, node 3 fed by a proxy from node 1.
    skip = [LayerPlan(lp.block, tuple(p for p in lp.proxies if p.src != 2)) for lp in layers]
    skip[1] = LayerPlan(False, ())
    skip[2] = LayerPlan(False, (layers[2].proxies[1],))
    skip[3] = LayerPlan(True, (layers[3].proxies[0], layers[3].proxies[2]))
    blocks_only = tuple(LayerPlan(True, ()) for _ in layers)
    rng = random.Random(7)
    return [
        full,
        Plan(full.arch, bottleneck, True, tuple(pruned)),
        Plan(full.arch, bottleneck, False, tuple(skip)),
        Plan(full.arch, bottleneck, True, blocks_only),
        Plan(full.arch, bottleneck, False, blocks_only),
        Plan(full.arch, bottleneck, False, blocks_only),
        random_plan(spec, rng, bottleneck=bottleneck),
    ]


_CASES = {
    "resnet10-basic": (BackboneConfig(arch="resnet10", stem="3x3s2", input_size=32, num_classes=10), False),
    "resnet10-bottleneck-proxies": (BackboneConfig(arch="resnet10", stem="imagenet", input_size=32,
                                                   num_classes=10), True),
    "resnet50": (BackboneConfig(arch="resnet50", stem="imagenet", input_size=32, num_classes=10), True),
}
_built: dict = {}


class _Refs:
    """Each task's reference TailoredNet, and its logits per input, computed once (the references run
    one image at a time, which is the slow part of these tests)."""

    def __init__(self) -> None:
        self.nets: dict[str, TailoredNet] = {}
        self._logits: dict[tuple[str, int], torch.Tensor] = {}

    def __call__(self, task_id: str, x: torch.Tensor) -> torch.Tensor:
        key = (task_id, hash(x.numpy().tobytes()))
        if key not in self._logits:
            with torch.inference_mode():
                self._logits[key] = self.nets[task_id](x[None])[0]
        return self._logits[key]


def _build(case: str):  # type: ignore[no-untyped-def]
    """Backbone, prepared tasks and references per case, built once per session."""
    if case not in _built:
        config, bottleneck = _CASES[case]
        bb = make_backbone(config=config)
        tasks, refs = [], _Refs()
        for i, plan in enumerate(_plans(bb.spec, bottleneck)):
            net = randomize(TailoredNet(bb, plan, 3 + i), seed=i)
            data = TaskPack.from_net(net, f"task-{i}", [str(j) for j in range(3 + i)], Preprocess()).to_bytes()
            tasks.append(PreparedTask.from_pack(TaskPack.from_bytes(data), bb, version=1))
            refs.nets[tasks[-1].task_id] = TaskPack.from_bytes(data).build(bb)
        _built[case] = bb, tasks, refs
    return _built[case]


def _inputs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=[(c, k) for c in _CASES for k in KERNELS], ids=lambda p: f"{p[0]}-{p[1]}")
def setup(request):  # type: ignore[no-untyped-def]
    case, kernel = request.param
    bb, tasks, refs = _build(case)
    return bb, Executor(bb, kernel=kernel), tasks, refs


def _check(out, pairs, refs) -> None:  # type: ignore[no-untyped-def]
    for (t, x), o in zip(pairs, out):
        ref = refs(t.task_id, x)
        assert o.shape == ref.shape
        # 1e-4, relative to the logits' scale where it passes 1: a randomly initialised ResNet-50 keeping
        # all 16 blocks gives logits near 150, where even the reference differs by 3e-4 between
        # memory formats.
        tol = 1e-4 * max(1.0, float(ref.abs().max()))
        assert torch.allclose(o, ref, atol=tol, rtol=0), (t.task_id, (o - ref).abs().max())


def test_mixed_batch_matches_each_task_alone(setup):
    _, ex, tasks, refs = setup
    xs = _inputs(8)
    items = [(tasks[(i * 5) % len(tasks)], xs[i % 8]) for i in range(17)]
    _check(ex.run(items), items, refs)


def test_single_task_batches_and_mixed_input_sizes(setup):
    _, ex, tasks, refs = setup
    xs = _inputs(3)
    items = [(tasks[0], xs[i]) for i in range(3)] + [(tasks[1], _inputs(1, size=40)[0])]
    _check(ex.run(items), items, refs)


@contextlib.contextmanager
def _watching_convs(ex: Executor, see: Callable[[torch.nn.Conv2d, torch.Tensor], None]) -> Iterator[None]:
    """Call ``see(conv, input)`` for every universal convolution ``ex`` runs meanwhile, at its
    convolution entry (which runs it as a conv, or as a matrix product on tiny maps)."""
    conv = ex.conv

    def watched(m: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        see(m, x)
        return conv(m, x)

    ex.conv = watched
    try:
        yield
    finally:
        ex.conv = conv


def _count_rows(bb, ex, call):  # type: ignore[no-untyped-def]
    """Rows each universal convolution saw during ``call()``: the stem, and block 4's first conv."""
    rows: dict[str, int] = {}
    names = {id(bb.net.conv1): "stem", id(bb.blocks[3].conv1): "b4"}

    def count(name, n):  # type: ignore[no-untyped-def]
        if name is not None:
            rows[name] = rows.get(name, 0) + n

    hook = bb.net.conv1.register_forward_hook(lambda _m, _i, o: count("stem", o.shape[0]))
    try:
        with _watching_convs(ex, lambda m, x: count(names.get(id(m)), x.shape[0])):
            out = call()
    finally:
        hook.remove()
    return rows, out


def test_one_image_many_tasks_matches_and_shares_work(setup):
    bb, ex, tasks, refs = setup
    x = _inputs(1)[0]
    rows, out = _count_rows(bb, ex, lambda: ex.run_multi(x, tasks))
    _check(out, [(t, x) for t in tasks], refs)
    # The stem conv runs once for the image, and the two frozen-BN, blocks-only tasks share every block.
    assert rows["stem"] == 1
    keep4 = [t for t in tasks if t.plan.layers[3].block]
    assert rows["b4"] == len(keep4) - 1  # tasks 4 and 5 compute block 4 once between them


def test_frames_and_single_samples_share_one_pass(setup):
    """Multi-task frames batched with each other and with single-task samples: one pass, the stem once
    per frame, shared frozen-BN prefixes once per frame, and every answer equal to its task alone."""
    bb, ex, tasks, refs = setup
    xs = _inputs(5)
    frames = [(xs[0], tasks), (xs[1], [tasks[2]]), (xs[2], tasks[3:]), (xs[3], [tasks[0]]), (xs[4], [tasks[5]])]
    rows, out = _count_rows(bb, ex, lambda: ex.run_frames(frames))
    for (x, ts), o in zip(frames, out):
        assert len(o) == len(ts)
        _check(o, [(t, x) for t in ts], refs)
    assert rows["stem"] == len(frames)
    keep4 = [[t for t in ts if t.plan.layers[3].block] for _, ts in frames]
    shared = [sum(t.task_id in ("task-4", "task-5") for t in k) for k in keep4]
    assert rows["b4"] == sum(len(k) - max(0, s - 1) for k, s in zip(keep4, shared))


def test_raw_frames_are_normalised_with_their_tasks_preprocessing(setup):
    """uint8 frames, as Preprocess.to_uint8 gives them (grey and colour, under two preprocessings), batched
    with a float frame: every answer equals its task on the frame normalised by that task's preprocessing."""
    _, ex, tasks, refs = setup
    colour = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 3)
    t_colour = dataclasses.replace(tasks[1], preprocess=colour)  # the same net, read through another preprocessing
    g = torch.Generator().manual_seed(3)
    grey = torch.randint(0, 256, (2, 1, 32, 32), generator=g, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8)
    frames = [(grey[0], [tasks[0], tasks[2]]), (_inputs(1)[0], [tasks[3]]), (rgb, [t_colour]), (grey[1], [tasks[4]])]
    out = ex.run_frames(frames)
    for (x, ts), o in zip(frames, out):
        want = x if x.is_floating_point() else ts[0].preprocess.normalize(x[None])[0]
        assert want.shape == (3, 32, 32)
        _check(o, [(t, want) for t in ts], refs)


def test_prepared_task_reports_its_device_bytes():
    _, tasks, refs = _build("resnet10-basic")
    for t in tasks:
        own = sum(v.numel() * v.element_size() for v in refs.nets[t.task_id].state_dict().values())
        assert t.nbytes == sum(x.numel() * x.element_size() for x in t.tensors())
        assert 0.5 * own < t.nbytes < 1.5 * own


def test_unknown_kernel_is_refused():
    bb, _, _ = _build("resnet10-basic")
    with pytest.raises(ValueError, match="kernel"):
        Executor(bb, kernel="fast")


def test_mixed_batch_convolutions_read_channels_last_rows(setup):
    """Rows gathered for a block (a subset of the batch's tasks) stay channels-last: in the other
    format every frozen convolution converted its input, and the tiny-map matrix products
    (server.denseconv) fell back to the 9x-arithmetic convolution (measured 0.6 -> 0.69 of the
    one-task rate on one core, bench/executor_bench.py)."""
    _, ex, tasks, refs = setup
    xs = _inputs(8)
    items = [(tasks[(i * 5) % len(tasks)], xs[i % 8]) for i in range(17)]
    formats: list[bool] = []
    with _watching_convs(ex, lambda _m, x: formats.append(x.permute(0, 2, 3, 1).is_contiguous())):
        out = ex.run(items)
    _check(out, items, refs)
    assert formats and all(formats)


def test_a_stem_with_negative_and_zero_bn_scales_matches_the_reference() -> None:
    """The executor max-pools the stem before its BN and ReLU (a minimum where a channel's scale is
    negative): exact for every sign, which a freshly initialised backbone (scales of 1) never shows."""
    bb = make_backbone(config=_CASES["resnet10-bottleneck-proxies"][0])  # the stem with a max-pool
    assert isinstance(bb.net.maxpool, torch.nn.MaxPool2d)
    with torch.no_grad():
        w = bb.net.bn1.weight
        w.copy_(torch.linspace(-1.0, 1.0, w.numel()))
        w[w.numel() // 2] = 0.0
    spec = bb.spec
    tasks, refs = [], _Refs()
    plans = (dataclasses.replace(Plan.full(spec, 3, bottleneck=False), task_bn=True),  # the task's own statistics
             dataclasses.replace(random_plan(spec, random.Random(3)), task_bn=False))  # the backbone's
    for i, plan in enumerate(plans):
        net = randomize(TailoredNet(bb, plan, 4), seed=10 + i)
        data = TaskPack.from_net(net, f"neg-{i}", [str(j) for j in range(4)], Preprocess()).to_bytes()
        tasks.append(PreparedTask.from_pack(TaskPack.from_bytes(data), bb, version=1))
        refs.nets[tasks[-1].task_id] = TaskPack.from_bytes(data).build(bb)
    assert any(t.affines is None for t in tasks) and any(t.affines is not None for t in tasks)
    xs = _inputs(6, seed=5)
    for kernel in KERNELS:
        items = [(tasks[i % 2], xs[i]) for i in range(6)]
        _check(Executor(bb, kernel=kernel).run(items), items, refs)
