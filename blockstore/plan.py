"""A task's plan: which universal blocks and which proxies its tailored network keeps.

Nodes are numbered 0..L: node 0 is the stem output and node l the output of layer l.  Layer l
mixes its paths, ``x_l = ReLU(sum_i alpha_i * path_i)``, where the paths are the universal block
G_l (reading node l-1; its residual sum ``F + shortcut`` enters before the one ReLU) when kept, then
the kept proxies A_p^l (reading node p < l).

A valid plan has no dangling paths: every kept path reads a live node (one with at least one
input, node 0 always), and node L is live.  Pruning (trainer) produces plans of that form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .backbone import BackboneSpec
from .errors import InvalidPlan
from .proxy import proxy_flops, proxy_params

__all__ = ["LayerPlan", "Plan", "PlanCost", "ProxySpec"]

PLAN_VERSION = 1


@dataclass(frozen=True)
class ProxySpec:
    src: int
    in_channels: int
    out_channels: int
    stride: int


@dataclass(frozen=True)
class LayerPlan:
    block: bool
    proxies: tuple[ProxySpec, ...] = ()

    @property
    def num_paths(self) -> int:
        return int(self.block) + len(self.proxies)

    @property
    def sources(self) -> list[int]:
        """Source node of each path, in alpha order (the block reads node l-1; see Plan.paths)."""
        return [p.src for p in self.proxies]


@dataclass(frozen=True)
class PlanCost:
    shared_params: int  # stem + kept universal blocks (held once for every task)
    task_params: int  # proxies + alphas + classifier
    task_buffers: int  # per-task BN running statistics
    flops: int  # stem + kept blocks + proxies + classifier
    blocks_kept: int
    blocks_total: int
    backbone_params: int  # stem + all universal blocks
    backbone_flops: int  # the full network with this classifier

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Plan:
    arch: str
    bottleneck: bool
    task_bn: bool  # per-task BN statistics for the frozen blocks (stored in the pack)
    layers: tuple[LayerPlan, ...] = field(default_factory=tuple)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def full(cls, spec: BackboneSpec, max_skip: int | None = 3, *, bottleneck: bool, task_bn: bool = True) -> Plan:
        """Every block, plus proxies from the ``max_skip`` closest earlier nodes (None: all of them)."""
        if max_skip is not None and max_skip < 1:
            raise InvalidPlan("max_skip must be at least 1 (or None for dense)")
        layers = []
        for l in range(1, spec.num_layers + 1):
            lo = 0 if max_skip is None else max(0, l - max_skip)
            layers.append(LayerPlan(True, tuple(_proxy(spec, p, l) for p in range(l - 1, lo - 1, -1))))
        return cls(spec.arch, bottleneck, task_bn, tuple(layers))

    def paths(self, layer: int) -> list[int | None]:
        """The paths of layer ``layer`` (1-based) in alpha order: None for the block, else the proxy source."""
        lp = self.layers[layer - 1]
        return ([None] if lp.block else []) + lp.sources

    def live_nodes(self) -> list[bool]:
        return [True] + [lp.num_paths > 0 for lp in self.layers]

    @property
    def blocks_kept(self) -> list[int]:
        return [l for l, lp in enumerate(self.layers, start=1) if lp.block]

    # -- validation ------------------------------------------------------------------------

    def validate(self, spec: BackboneSpec) -> None:
        """Raise InvalidPlan unless the plan runs on a backbone of shape ``spec``."""
        if self.arch != spec.arch:
            raise InvalidPlan(f"plan is for {self.arch}, backbone is {spec.arch}")
        if len(self.layers) != spec.num_layers:
            raise InvalidPlan(f"plan has {len(self.layers)} layers, backbone has {spec.num_layers}")
        live = self.live_nodes()
        if not live[-1]:
            raise InvalidPlan(f"the last node ({spec.num_layers}) has no inputs: nothing reaches the classifier")
        for l, lp in enumerate(self.layers, start=1):
            if lp.block and not live[l - 1]:
                raise InvalidPlan(f"layer {l} keeps its block but node {l - 1} has no inputs")
            seen = set()
            for p in lp.proxies:
                if not 0 <= p.src < l:
                    raise InvalidPlan(f"layer {l}: proxy source {p.src} must be an earlier node (0..{l - 1})")
                if p.src in seen:
                    raise InvalidPlan(f"layer {l}: two proxies from node {p.src}")
                seen.add(p.src)
                if not live[p.src]:
                    raise InvalidPlan(f"layer {l}: proxy reads node {p.src}, which has no inputs")
                want = _proxy(spec, p.src, l)
                if p != want:
                    raise InvalidPlan(f"layer {l}: proxy {p} does not fit the backbone, which needs {want}")

    # -- accounting ------------------------------------------------------------------------

    def cost(self, spec: BackboneSpec, num_classes: int, bn_buffers_per_block: list[int] | None = None) -> PlanCost:
        kept = self.blocks_kept
        task_params = num_classes * spec.nodes[-1].channels + num_classes
        flops = spec.stem_flops + num_classes * spec.nodes[-1].channels
        for l, lp in enumerate(self.layers, start=1):
            task_params += lp.num_paths
            for p in lp.proxies:
                task_params += proxy_params(p.in_channels, p.out_channels, self.bottleneck)
                flops += proxy_flops(p.in_channels, p.out_channels, spec.nodes[l].size, self.bottleneck)
        flops += sum(spec.blocks[l - 1].flops for l in kept)
        buffers = 0
        if self.task_bn and bn_buffers_per_block is not None:
            buffers = bn_buffers_per_block[0] + sum(bn_buffers_per_block[l] for l in kept)
        return PlanCost(
            shared_params=spec.stem_params + sum(spec.blocks[l - 1].params for l in kept),
            task_params=task_params,
            task_buffers=buffers,
            flops=flops,
            blocks_kept=len(kept),
            blocks_total=spec.num_layers,
            backbone_params=spec.stem_params + spec.blocks_params,
            backbone_flops=spec.stem_flops + spec.blocks_flops + num_classes * spec.nodes[-1].channels,
        )

    # -- JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "arch": self.arch,
            "bottleneck": self.bottleneck,
            "task_bn": self.task_bn,
            "layers": [
                {"block": lp.block, "proxies": [dict(p.__dict__) for p in lp.proxies]} for lp in self.layers
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: object) -> Plan:
        try:
            _need(isinstance(d, dict), "plan must be a JSON object")
            assert isinstance(d, dict)
            if d.get("version") != PLAN_VERSION:
                raise InvalidPlan(f"plan version {d.get('version')!r} is not supported (want {PLAN_VERSION})")
            layers = []
            for i, ld in enumerate(d["layers"], start=1):
                _need(isinstance(ld["block"], bool), f"layer {i}: 'block' must be a boolean")
                proxies = []
                for pd in ld["proxies"]:
                    vals = [pd[k] for k in ("src", "in_channels", "out_channels", "stride")]
                    _need(all(type(v) is int for v in vals), f"layer {i}: bad proxy {pd}")
                    proxies.append(ProxySpec(*vals))
                layers.append(LayerPlan(ld["block"], tuple(proxies)))
            _need(
                isinstance(d["arch"], str) and isinstance(d["bottleneck"], bool) and isinstance(d["task_bn"], bool),
                "arch must be a string, bottleneck and task_bn booleans",
            )
            return cls(d["arch"], d["bottleneck"], d["task_bn"], tuple(layers))
        except (KeyError, TypeError) as e:
            raise InvalidPlan(f"malformed plan: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidPlan(f"plan is not JSON: {e}") from None
        return cls.from_dict(d)


def _proxy(spec: BackboneSpec, src: int, layer: int) -> ProxySpec:
    a, b = spec.nodes[src], spec.nodes[layer]
    return ProxySpec(src, a.channels, b.channels, b.scale // a.scale)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidPlan(f"malformed plan: {msg}")
