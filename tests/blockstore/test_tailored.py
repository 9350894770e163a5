"""TailoredNet's tensor layout, its analytic twin, and pruning by restriction."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from blockstore import Backbone, BackboneConfig, LayerPlan, Plan, TailoredNet
from blockstore.tailored import task_tensor_spec


def _plans(spec, bottleneck):
    full = Plan.full(spec, 3, bottleneck=bottleneck)
    layers = list(full.layers)
    layers[1] = LayerPlan(False, layers[1].proxies[:1])
    pruned = dataclasses.replace(full, layers=tuple(layers))
    return [full, pruned, dataclasses.replace(pruned, task_bn=False), Plan.full(spec, None, bottleneck=bottleneck)]


@pytest.mark.parametrize("arch", ["resnet10", "resnet50"])
def test_analytic_spec_equals_the_real_state_dict(arch):
    bb = Backbone(BackboneConfig(arch=arch, stem="3x3s2", input_size=32, num_classes=10)).freeze().eval()
    for plan in _plans(bb.spec, bb.bottleneck):
        real = {k: (v.dtype, tuple(v.shape)) for k, v in TailoredNet(bb, plan, 7).state_dict().items()}
        assert task_tensor_spec(bb, plan, 7) == real


def test_with_plan_keeps_logits_of_masked_paths(backbone):
    from tests.conftest import randomize

    net = randomize(TailoredNet(backbone, Plan.full(backbone.spec, 3, bottleneck=False), 4), seed=3)
    layers = list(net.plan.layers)
    layers[2] = LayerPlan(True, layers[2].proxies[1:])
    small = net.with_plan(dataclasses.replace(net.plan, layers=tuple(layers))).eval()
    with torch.no_grad():
        net.alphas["3"][1] = float("-inf")  # the dropped proxy's alpha is exactly zero after softmax
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(small(x), net(x), atol=1e-6)
    assert "proxies.3_2.body.0.weight" not in small.state_dict()
