"""Plans: construction, validation against a backbone, accounting and JSON."""

from __future__ import annotations

import dataclasses

import pytest

from blockstore import InvalidPlan, LayerPlan, Plan, ProxySpec, TailoredNet, bn_buffers_per_block


def test_full_plan_reaches_the_k_closest_nodes(backbone):
    spec = backbone.spec
    plan = Plan.full(spec, 3, bottleneck=False)
    assert [plan.paths(l) for l in range(1, 5)] == [[None, 0], [None, 1, 0], [None, 2, 1, 0], [None, 3, 2, 1]]
    dense = Plan.full(spec, None, bottleneck=False)
    assert dense.paths(4) == [None, 3, 2, 1, 0]
    assert Plan.full(spec, 1, bottleneck=False).paths(3) == [None, 2]
    # Proxy shapes follow the recorded nodes: node 0 (64 ch, 16 px) to node 4 (512 ch, 2 px).
    assert dense.layers[3].proxies[-1] == ProxySpec(0, 64, 512, 8)
    with pytest.raises(InvalidPlan):
        Plan.full(spec, 0, bottleneck=False)


def test_json_round_trip(backbone):
    plan = Plan.full(backbone.spec, 3, bottleneck=False, task_bn=False)
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    "bad", ["{", "[]", '{"version": 9}', '{"version": 1, "arch": "resnet10"}',
            '{"version":1,"arch":"resnet10","bottleneck":false,"task_bn":true,"layers":[{"block":"yes","proxies":[]}]}',
            '{"version":1,"arch":"resnet10","bottleneck":false,"task_bn":true,"layers":[{"block":true,"proxies":[{"src":"0"}]}]}'],
)
def test_malformed_json_is_invalid_plan(bad):
    with pytest.raises(InvalidPlan):
        Plan.from_json(bad)


def _with_layer(plan: Plan, l: int, layer: LayerPlan) -> Plan:
    layers = list(plan.layers)
    layers[l - 1] = layer
    return dataclasses.replace(plan, layers=tuple(layers))


def test_validation_rejects_plans_that_do_not_fit(backbone):
    spec = backbone.spec
    plan = Plan.full(spec, 3, bottleneck=False)
    plan.validate(spec)
    p = plan.layers[2].proxies
    cases = {
        "does not fit": _with_layer(plan, 3, LayerPlan(True, (dataclasses.replace(p[0], out_channels=99),))),
        "stride": _with_layer(plan, 3, LayerPlan(True, (dataclasses.replace(p[0], stride=1),))),
        "earlier node": _with_layer(plan, 2, LayerPlan(True, (ProxySpec(2, 64, 128, 2),))),
        "two proxies": _with_layer(plan, 3, LayerPlan(True, (p[0], p[0]))),
        "nothing reaches": _with_layer(plan, 4, LayerPlan(False, ())),
        "has no inputs": _with_layer(plan, 2, LayerPlan(False, ())),  # layer 3's block reads node 2
        "layers": dataclasses.replace(plan, layers=plan.layers[:3]),
        "plan is for": dataclasses.replace(plan, arch="resnet18"),
    }
    for msg, bad in cases.items():
        with pytest.raises(InvalidPlan, match=msg):
            bad.validate(spec)
        with pytest.raises(InvalidPlan):
            TailoredNet(backbone, bad, 3)


def test_a_node_without_inputs_is_fine_when_nothing_reads_it(backbone):
    spec = backbone.spec
    plan = Plan.full(spec, 3, bottleneck=False)
    # Layer 2 dead; layer 3 keeps only the proxy from node 1; layer 4 reads node 3.
    plan = _with_layer(plan, 2, LayerPlan(False, ()))
    plan = _with_layer(plan, 3, LayerPlan(False, (plan.layers[2].proxies[1],)))
    plan = _with_layer(plan, 4, LayerPlan(True, ()))
    plan.validate(spec)
    assert plan.live_nodes() == [True, True, False, True, True]
    assert plan.blocks_kept == [1, 4]


def test_cost_separates_shared_and_task_parameters(backbone):
    spec = backbone.spec
    full = Plan.full(spec, 3, bottleneck=False)
    net = TailoredNet(backbone, full, 7)
    cost = full.cost(spec, 7, bn_buffers_per_block(backbone))
    assert cost.shared_params == spec.stem_params + spec.blocks_params == cost.backbone_params
    assert cost.task_params == sum(p.numel() for p in net.parameters())
    assert cost.task_buffers == sum(b.numel() for n, b in net.named_buffers() if "norms." in n)
    assert cost.blocks_kept == cost.blocks_total == 4
    lean = _with_layer(full, 4, LayerPlan(False, (full.layers[3].proxies[0],)))
    lean_cost = lean.cost(spec, 7, bn_buffers_per_block(backbone))
    assert lean_cost.shared_params == cost.shared_params - spec.blocks[3].params
    assert lean_cost.flops < cost.flops and lean_cost.blocks_kept == 3
    assert lean_cost.task_params == sum(p.numel() for p in TailoredNet(backbone, lean, 7).parameters())
