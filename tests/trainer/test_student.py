from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blockstore import Plan, TailoredNet
from tests.conftest import make_backbone
from trainer.errors import ConfigError
from trainer.losses import distillation
from trainer.student import StudentConfig, make_student, param_groups, student_forward, train_student
from trainer.teacher import make_teacher, teacher_forward, train_teacher

from .conftest import quick_student, quick_teacher


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("task_bn", [True, False])
def test_frozen_blocks_never_change(tiny_task, task_bn):
    bb = make_backbone(seed=5)
    before = _snapshot(bb)
    teacher = make_teacher(bb, tiny_task.num_classes).eval()
    net, metrics = train_student(bb, teacher, tiny_task, quick_student(steps=3, task_bn=task_bn))
    after = bb.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"backbone tensor {k} changed"
    assert all(not p.requires_grad for p in bb.parameters())
    assert (net.norms is not None) == task_bn
    if task_bn:  # the task's own BN statistics did move
        fresh = make_student(bb, tiny_task.num_classes, StudentConfig(task_bn=True))
        moved = [k for k, v in fresh.state_dict().items() if "running_mean" in k
                 and not torch.equal(v, net.state_dict()[k])]
        assert moved
    assert set(metrics) >= {"val_acc", "test_acc", "history"}


def test_only_task_tensors_receive_gradients(backbone, tiny_task):
    teacher = make_teacher(backbone, 4).eval()
    net = make_student(backbone, 4, StudentConfig())
    x = tiny_task.preprocess.normalize(tiny_task.train.images[:8])
    logits, local = student_forward(net, x)
    with torch.no_grad():
        t_nodes, t_logits = teacher_forward(teacher, x)
    (F.cross_entropy(logits, tiny_task.train.labels[:8]) + distillation(local, t_nodes, logits, t_logits)).backward()
    assert all(p.grad is None for p in backbone.parameters())
    named = dict(net.named_parameters())
    assert named and all(p.grad is not None for p in named.values()), [k for k, p in named.items() if p.grad is None]
    groups = param_groups(net, 0.03)
    assert groups[1]["weight_decay"] == 0.0 and {id(p) for p in groups[1]["params"]} == {
        id(p) for p in net.alphas.parameters()}


def test_local_nodes_match_detached_layer_and_stay_local(backbone, tiny_task):
    net = make_student(backbone, 4, StudentConfig()).train()
    x = tiny_task.preprocess.normalize(tiny_task.train.images[:8])
    stats = {k: v.clone() for k, v in net.state_dict().items() if "proxies" in k}
    student_forward(net, x)
    # second (detached) pass over the proxies must leave their BN statistics where one pass put them
    net2 = make_student(backbone, 4, StudentConfig()).train()
    net2.load_state_dict({**net2.state_dict(), **stats})
    net2(x)
    for k in stats:
        assert torch.equal(net.state_dict()[k], net2.state_dict()[k]), k
    net.eval()
    with torch.no_grad():
        nodes = net.forward_nodes(x)
        _, local_eval = student_forward(net, x)
        for l in range(1, 5):
            want = net.layer(l, [n.detach() if n is not None else None for n in nodes])
            torch.testing.assert_close(local_eval[l - 1], want)
    net.train()
    _, local = student_forward(net, x)
    local[2].sum().backward()  # node 3's Omega term must not reach layers 1-2
    assert net.alphas["1"].grad is None and net.alphas["2"].grad is None
    assert net.alphas["3"].grad is not None
    assert all(p.grad is None for k, p in net.proxies.items() if not k.startswith("3_") for p in p.parameters())


def test_student_plan_follows_reach(backbone):
    dense = make_student(backbone, 3, StudentConfig(max_skip=None))
    assert dense.plan == Plan.full(backbone.spec, None, bottleneck=False)
    assert [len(dense.plan.paths(l)) for l in range(1, 5)] == [2, 3, 4, 5]
    one = make_student(backbone, 3, StudentConfig(max_skip=1))
    assert [len(one.plan.paths(l)) for l in range(1, 5)] == [2, 2, 2, 2]
    assert torch.allclose(one.path_weights(1), torch.softmax(torch.tensor([2.0, -2.0]), 0))
    with pytest.raises(ConfigError):
        StudentConfig(max_skip=0)
    with pytest.raises(ConfigError):
        StudentConfig(input_exclusion="nearest")  # type: ignore[arg-type]


def test_teacher_trains_all_weights_and_student_learns(tiny_task):
    bb = make_backbone(seed=2)
    teacher, tm = train_teacher(bb, tiny_task, quick_teacher(steps=None, epochs=2, min_steps=1, eval_every=4))
    assert tm["val_acc"] > 0.5  # 4 classes: chance is 0.25
    changed = [k for k, v in teacher.net.state_dict().items() if not k.startswith("fc") and v.is_floating_point()
               and not torch.equal(v, bb.net.state_dict()[k])]
    assert changed
    net, sm = train_student(bb, teacher, tiny_task, quick_student(steps=24, eval_every=4, patience=None))
    assert isinstance(net, TailoredNet)
    ce = [c["ce"] for c in sm["history"]["checks"]]
    assert all("plateau" in c and "val_acc" in c for c in sm["history"]["checks"])  # alphas watched
    assert ce[-1] < ce[0], ce  # the student learns the task on the frozen blocks
    assert sm["val_acc"] > 0.3, sm["val_acc"]
