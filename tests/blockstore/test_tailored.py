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
    assert "proxies.3_2.conv.weight" not in small.state_dict()


def test_bottleneck_proxy_is_4x_narrower_than_the_block_bottleneck():
    from blockstore.proxy import Proxy, proxy_params

    bb = Backbone(BackboneConfig(arch="resnet50", stem="3x3s2", input_size=32, num_classes=10))
    proxy = Proxy(256, 512, 2, bottleneck=True)  # node 3 (256 ch) -> layer 4's output (512 ch)
    assert proxy.down.weight.shape == (32, 256, 1, 1)  # 512 / 16, where the block's own width is 512 / 4
    assert proxy.up.weight.shape == (512, 32, 1, 1)
    # 256*32 + 2*32 (BN) + 32*512 + 2*512 (BN), by hand
    assert proxy_params(256, 512, True) == 8192 + 64 + 16384 + 1024
    block = bb.blocks[3]
    assert block.conv1.out_channels == 128  # 512 / 4: the proxy is 4x narrower
    # A k=3 ResNet-50 student: proxies hold far fewer parameters than the blocks (the paper's ~6.6 M)
    plan = Plan.full(bb.spec, 3, bottleneck=True)
    proxies = sum(proxy_params(p.in_channels, p.out_channels, True) for lp in plan.layers for p in lp.proxies)
    assert 5e6 < proxies < 8e6 < bb.spec.blocks_params


@pytest.mark.parametrize("arch", ["resnet10", "resnet50"])
def test_block_path_alone_equals_the_torchvision_block(arch):
    """One ReLU on the block path: with alpha_G = 1 and no proxies, node l is torchvision's block output."""
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(arch=arch, stem="3x3s2", input_size=32, num_classes=10)).freeze().eval()
    spec = bb.spec
    plan = Plan(spec.arch, bb.bottleneck, False, tuple(LayerPlan(True, ()) for _ in spec.blocks))
    net = TailoredNet(bb, plan, 5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        nodes = net.forward_nodes(x)
        h = bb.stem_modules(x)
        assert torch.allclose(nodes[0], h, atol=1e-6)
        for l, blk in enumerate(bb.blocks, start=1):
            h = blk(h)
            assert torch.allclose(nodes[l], h, atol=1e-5), l
        # With a proxy, the block's residual sum enters the mix un-rectified: one ReLU after the sum.
        full = TailoredNet(bb, Plan.full(spec, 1, bottleneck=bb.bottleneck, task_bn=False), 5).eval()
        n = full.forward_nodes(x)
        w = full.path_weights(2)
        block_sum = full.block(2, n[1])
        assert (block_sum < 0).any()  # the residual sum is not rectified on its own
        want = torch.relu(w[0] * block_sum + w[1] * full.proxy(2, 1)(n[1]))
        assert torch.allclose(n[2], want, atol=1e-6)
