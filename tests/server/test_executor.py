"""Block-wise mixed-task execution equals running each sample alone through its TailoredNet."""

from __future__ import annotations

import pytest
import torch

from blockstore import LayerPlan, Plan, Preprocess, TailoredNet, TaskPack
from server.executor import Executor, PreparedTask
from tests.conftest import make_backbone, randomize


def _plans(spec):
    full = Plan.full(spec, 3, bottleneck=False)
    layers = list(full.layers)
    # Drops block 2 (node 2 fed by one proxy), keeps only block 4, frozen BN statistics.
    pruned = list(layers)
    pruned[1] = LayerPlan(False, layers[1].proxies[:1])
    pruned[3] = LayerPlan(True, ())
    # Node 2 dead, node 3 fed by a proxy from node 1.
    skip = list(layers)
    skip[1] = LayerPlan(False, ())
    skip[2] = LayerPlan(False, (layers[2].proxies[1],))
    skip[3] = LayerPlan(True, (layers[3].proxies[0], layers[3].proxies[2]))
    blocks_only = tuple(LayerPlan(True, ()) for _ in layers)
    return [
        full,
        Plan(full.arch, False, True, tuple(pruned)),
        Plan(full.arch, False, False, tuple(skip)),
        Plan(full.arch, False, True, blocks_only),
        Plan(full.arch, False, False, blocks_only),
        Plan(full.arch, False, False, blocks_only),
    ]


refs: dict = {}


@pytest.fixture(scope="module")
def setup():
    bb = make_backbone()
    tasks = []
    for i, plan in enumerate(_plans(bb.spec)):
        net = randomize(TailoredNet(bb, plan, 3 + i), seed=i)
        data = TaskPack.from_net(net, f"task-{i}", [str(j) for j in range(3 + i)], Preprocess()).to_bytes()
        tasks.append(PreparedTask.from_pack(TaskPack.from_bytes(data), bb, version=1))
        refs[tasks[-1].task_id] = TaskPack.from_bytes(data).build(bb)
    return bb, Executor(bb), tasks


def test_mixed_batch_matches_each_task_alone(setup):
    _, ex, tasks = setup
    torch.manual_seed(0)
    xs = torch.randn(17, 3, 32, 32)
    items = [(tasks[(i * 5) % len(tasks)], xs[i]) for i in range(len(xs))]
    out = ex.run(items)
    with torch.inference_mode():
        for (t, x), o in zip(items, out):
            ref = refs[t.task_id](x[None])[0]
            assert o.shape == ref.shape
            assert torch.allclose(o, ref, atol=1e-4, rtol=0), (t.task_id, (o - ref).abs().max())


def test_single_task_batches_and_mixed_input_sizes(setup):
    _, ex, tasks = setup
    items = [(tasks[0], torch.randn(3, 32, 32)) for _ in range(3)] + [(tasks[1], torch.randn(3, 40, 40))]
    out = ex.run(items)
    with torch.inference_mode():
        for (t, x), o in zip(items, out):
            assert torch.allclose(o, refs[t.task_id](x[None])[0], atol=1e-4, rtol=0)


def test_one_image_many_tasks_matches_and_shares_work(setup):
    bb, ex, tasks = setup
    x = torch.randn(3, 32, 32)
    out = ex.run_multi(x, tasks)
    with torch.inference_mode():
        for t, o in zip(tasks, out):
            assert torch.allclose(o, refs[t.task_id](x[None])[0], atol=1e-4, rtol=0)
    # Count the rows each universal block convolves: the stem conv runs once for the image, and
    # the two frozen-BN, blocks-only tasks share every block.
    rows: dict[str, int] = {}

    def counter(name):
        return lambda _m, _i, o: rows.__setitem__(name, rows.get(name, 0) + o.shape[0])

    hooks = [m.register_forward_hook(counter(n)) for n, m in [("stem", bb.net.conv1), ("b4", bb.blocks[3].conv1)]]
    try:
        ex.run_multi(x, tasks)
    finally:
        for h in hooks:
            h.remove()
    assert rows["stem"] == 1
    keep4 = [t for t in tasks if t.plan.layers[3].block]
    assert rows["b4"] == len(keep4) - 1  # tasks 4 and 5 compute block 4 once between them


def test_prepared_task_reports_its_device_bytes(setup):
    _, _, tasks = setup
    for t in tasks:
        own = sum(v.numel() * v.element_size() for v in refs[t.task_id].state_dict().values())
        assert t.nbytes == sum(x.numel() * x.element_size() for x in t.tensors())
        assert 0.5 * own < t.nbytes < 1.5 * own
