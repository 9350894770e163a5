from __future__ import annotations

import pytest
import torch

from blockstore import Plan, TailoredNet
from trainer.losses import distillation, expected_complexity, path_complexities, toy_expected_complexity

# A 3-layer toy with reach k = 2: layer l has the block (reading l-1) and proxies from l-1 and l-2.
PATHS = {1: [None, 0], 2: [None, 1, 0], 3: [None, 2, 1]}
ALPHAS = {1: [0.7, 0.3], 2: [0.6, 0.3, 0.1], 3: [0.5, 0.2, 0.3]}
COMPLEXITY = {1: [0.2, 0.01], 2: [0.3, 0.02, 0.03], 3: [0.4, 0.05, 0.04]}


def _hand(previous: bool) -> float:
    dead1 = 0.3 * 0.7  # P(node 1 has no inputs) = prod(1 - alpha) over layer 1's paths
    dead2 = 0.4 * 0.7 * 0.9
    unread1 = 0.4 * 0.7 * 0.7  # readers of node 1: block 2, proxy 1->2, proxy 1->3
    unread2 = 0.5 * 0.8  # readers of node 2: block 3, proxy 2->3
    # node 0 is never dead, node 3 is always read (classifier)
    c = 0.2 * (0.7 - 0 - unread1) + 0.01 * (0.3 - 0 - unread1)
    c += 0.3 * (0.6 - dead1 - unread2) + 0.02 * (0.3 - dead1 - unread2)
    c += 0.03 * (0.1 - (dead1 if previous else 0.0) - unread2)
    c += 0.4 * (0.5 - dead2) + 0.05 * (0.2 - dead2) + 0.04 * (0.3 - (dead2 if previous else dead1))
    return c


@pytest.mark.parametrize("mode", ["source", "previous"])
def test_expected_complexity_matches_hand_computation(mode):
    alphas = {l: torch.tensor(a, dtype=torch.float64) for l, a in ALPHAS.items()}
    got = toy_expected_complexity(alphas, PATHS, COMPLEXITY, 3, mode)
    assert float(got) == pytest.approx(_hand(mode == "previous"), abs=1e-12)
    assert float(got) == pytest.approx(0.18384 if mode == "source" else 0.17586, abs=1e-9)


@pytest.mark.parametrize("mode", ["source", "previous"])
def test_expected_complexity_gradient_reaches_every_alpha(mode):
    logits = {l: torch.tensor(a, dtype=torch.float64).log().requires_grad_() for l, a in ALPHAS.items()}
    alphas = {l: torch.softmax(v, 0) for l, v in logits.items()}
    toy_expected_complexity(alphas, PATHS, COMPLEXITY, 3, mode).backward()
    for l, v in logits.items():
        assert v.grad is not None
        assert (v.grad.abs() > 1e-6).all(), (l, v.grad)


def test_expected_complexity_rejects_unknown_mode():
    alphas = {l: torch.tensor(a) for l, a in ALPHAS.items()}
    with pytest.raises(ValueError, match="input_exclusion"):
        toy_expected_complexity(alphas, PATHS, COMPLEXITY, 3, "sideways")  # type: ignore[arg-type]


def test_expected_complexity_on_a_tailored_net(backbone):
    net = TailoredNet(backbone, Plan.full(backbone.spec, 3, bottleneck=False), 4)
    comp = path_complexities(net)
    assert comp[2][0] == pytest.approx(backbone.spec.complexity(2))
    assert all(c < comp[l][0] for l in comp for c in comp[l][1:])  # proxies are cheaper than blocks
    ec = expected_complexity(net)
    ec.backward()
    for l, a in net.alphas.items():
        assert a.grad is not None and (a.grad.abs() > 0).all(), l
    # At initialisation (block alpha ~0.98) almost the whole network is expected to stay.
    blocks = sum(backbone.spec.complexity(l) for l in range(1, 5))
    assert 0.5 * blocks < float(ec.detach()) < blocks


def test_distillation_averages_over_blocks_and_skips_dead_nodes():
    t = [torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3)]
    s = [torch.ones(2, 3), None, torch.full((2, 3), 2.0)]
    logits_s, logits_t = torch.ones(2, 4), torch.zeros(2, 4)
    # (1 + 0 + 4) per-node MSEs, plus 1 for the logits, over L = 3 blocks
    assert float(distillation(s, t, logits_s, logits_t)) == pytest.approx(6 / 3)
