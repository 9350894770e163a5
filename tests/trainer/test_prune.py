from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blockstore import Plan, TailoredNet
from tests.conftest import randomize
from trainer.errors import ConfigError
from trainer.prune import PruneConfig, alphas_of, prune, prune_plan

# resnet10 with k = 3: L1 [G, 0]; L2 [G, 1, 0]; L3 [G, 2, 1, 0]; L4 [G, 3, 2, 1]  (G: the block)
HI, LO = 0.5, 0.01


@pytest.fixture
def full(backbone) -> Plan:
    return Plan.full(backbone.spec, 3, bottleneck=False)


def kept(plan: Plan) -> dict[int, list[int | None]]:
    return {l: plan.paths(l) for l in range(1, len(plan.layers) + 1)}


def alphas(**layers) -> dict[int, list[float]]:
    base = {1: [0.9, LO], 2: [0.9, LO, LO], 3: [0.9, LO, LO, LO], 4: [0.9, LO, LO, LO]}
    base.update({int(k[1:]): v for k, v in layers.items()})
    return base


def test_self_exclusion_drops_weak_proxies(full):
    plan = prune_plan(full, alphas(l3=[0.5, 0.3, LO, 0.2]), 0.05, 0)
    assert kept(plan) == {1: [None], 2: [None], 3: [None, 2, 0], 4: [None]}


def test_dropping_lowest_blocks(full):
    plan = prune_plan(full, alphas(l2=[0.3, 0.6, HI], l3=[0.8, LO, LO, HI]), 0.05, 1)
    # block 2 has the lowest alpha; node 2 lives on through its proxies from nodes 1 and 0
    assert kept(plan) == {1: [None], 2: [1, 0], 3: [None, 0], 4: [None]}


def test_input_exclusion_takes_outgoing_proxies(full):
    a = alphas(l1=[0.2, LO], l2=[0.6, HI, HI], l3=[0.9, LO, HI, LO], l4=[0.9, LO, LO, HI])
    plan = prune_plan(full, a, 0.05, 1)
    # node 1 lost its only inputs: block 2 and every proxy reading node 1 go with it
    assert kept(plan) == {1: [], 2: [0], 3: [None], 4: [None]}


def test_output_exclusion_cascades(full):
    a = alphas(l2=[0.95, LO, LO], l3=[0.95, HI, LO, LO], l4=[0.1, LO, LO, HI])
    plan = prune_plan(full, a, 0.05, 1)
    # block 4 goes; node 3 is then read by nobody, so layer 3 goes; then node 2, so layer 2 goes
    assert kept(plan) == {1: [None], 2: [], 3: [], 4: [1]}


def test_fully_pruned_last_layer_is_reconnected(full):
    a = alphas(l2=[0.2, LO, LO], l4=[0.95, LO, LO, 0.04])
    plan = prune_plan(full, a, 0.05, 1)
    # block 2 goes, so blocks 3 and 4 lose their input: the best live path into node 4 comes back
    assert kept(plan) == {1: [None], 2: [], 3: [], 4: [1]}


def test_everything_removed_still_reaches_the_classifier(backbone, full):
    a = {l: [0.9] + [LO] * (len(full.paths(l)) - 1) for l in range(1, 5)}
    plan = prune_plan(full, a, 0.05, 4)
    plan.validate(backbone.spec)
    assert plan.live_nodes()[-1]
    assert sum(lp.num_paths for lp in plan.layers) >= 1


def test_bad_arguments(full):
    with pytest.raises(ConfigError):
        prune_plan(full, alphas(), 0.05, 5)
    with pytest.raises(ConfigError):
        prune_plan(full, {1: [1.0]}, 0.05, 0)
    with pytest.raises(ConfigError):
        PruneConfig(threshold=1.5)


def _masked_forward(net: TailoredNet, plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """The unpruned net with dropped paths' alphas set to zero and the rest renormalised."""
    nodes: list[torch.Tensor | None] = [net.stem(x)]
    for l in range(1, len(plan.layers) + 1):
        keep = plan.paths(l)
        if not keep:
            nodes.append(None)
            continue
        w = net.path_weights(l)
        mask = torch.tensor([p in keep for p in net.plan.paths(l)], dtype=w.dtype)
        w = w * mask / (w * mask).sum()
        acc = 0
        for i, src in enumerate(net.plan.paths(l)):
            if mask[i]:
                b = net.block(l, nodes[l - 1]) if src is None else net.proxies[f"{l}_{src}"](nodes[src])
                acc = acc + w[i] * b
        nodes.append(F.relu(acc))
    return net.classify(nodes[-1])


@pytest.mark.parametrize(("threshold", "n"), [(0.05, 0), (0.2, 1), (0.3, 2), (0.05, 4)])
def test_pruned_net_equals_masked_student(backbone, full, threshold, n):
    net = randomize(TailoredNet(backbone, full, 5), seed=3 + n)
    pruned = prune(net, PruneConfig(threshold, n)).eval()
    assert pruned.plan != full or threshold == 0.05
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = _masked_forward(net, pruned.plan, x)
        got = pruned(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and the pruned net really is smaller where the pattern says so
    assert sum(lp.num_paths for lp in pruned.plan.layers) <= sum(lp.num_paths for lp in full.layers)
    assert alphas_of(net).keys() == set(range(1, 5))
