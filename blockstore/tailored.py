"""TailoredNet: the single definition of what a task computes.

Built from a shared (frozen) :class:`Backbone` and a :class:`Plan`, it owns only the task's tensors:
proxies, path logits (alphas), the classifier and, by default, the BN running statistics of the
stem and of every kept universal block.  The backbone is held by reference and is deliberately not
a submodule, so ``state_dict()``, ``parameters()`` and ``.to()`` see exactly the task's tensors and
moving a task between devices never moves the universal blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Backbone
from .frozen import BNStats, block_bns, run_block, run_stem
from .plan import Plan
from .proxy import Proxy, proxy_tensor_spec

__all__ = ["ALPHA_BLOCK_INIT", "ALPHA_PROXY_INIT", "TailoredNet"]

ALPHA_BLOCK_INIT = 2.0
ALPHA_PROXY_INIT = -2.0


class TailoredNet(nn.Module):
    def __init__(self, backbone: Backbone, plan: Plan, num_classes: int) -> None:
        super().__init__()
        spec = backbone.spec
        plan.validate(spec)
        object.__setattr__(self, "backbone", backbone)  # shared, not a submodule
        self.backbone: Backbone
        self.plan = plan
        self.num_classes = num_classes
        self.proxies = nn.ModuleDict()
        self.alphas = nn.ParameterDict()
        for l, lp in enumerate(plan.layers, start=1):
            for p in lp.proxies:
                self.proxies[_pkey(l, p.src)] = Proxy(p.in_channels, p.out_channels, p.stride, plan.bottleneck)
            init = [ALPHA_BLOCK_INIT] * int(lp.block) + [ALPHA_PROXY_INIT] * len(lp.proxies)
            if init:
                self.alphas[str(l)] = nn.Parameter(torch.tensor(init))
        self.norms: nn.ModuleDict | None = None
        if plan.task_bn:
            net = backbone.net
            self.norms = nn.ModuleDict({"stem": nn.ModuleDict({"bn1": BNStats(net.bn1)})})
            blocks = backbone.blocks
            for l in plan.blocks_kept:
                self.norms[f"b{l}"] = nn.ModuleDict({k: BNStats(m) for k, m in block_bns(blocks[l - 1]).items()})
        self.head = nn.Linear(spec.nodes[-1].channels, num_classes)
        # Follow the backbone's device so a fresh net is ready to run (unless built on "meta" to be
        # filled by load_state_dict(assign=True)).
        if self.head.weight.device.type != "meta":
            self.to(next(backbone.parameters()).device)

    # -- forward ---------------------------------------------------------------------------

    @property
    def bn_training(self) -> bool:
        """Frozen blocks' BN normalise with batch statistics (and update the task's) in training."""
        return self.training and self.norms is not None

    def stem(self, x: Tensor) -> Tensor:
        net = self.backbone.net
        stats = self.norms["stem"] if self.norms is not None else None
        return run_stem(net.conv1, net.bn1, net.maxpool, x, stats, self.bn_training)  # type: ignore[arg-type]

    def block(self, layer: int, x: Tensor) -> Tensor:
        """The universal block G_layer's residual sum (before its ReLU) with this task's BN statistics."""
        stats = self.norms[f"b{layer}"] if self.norms is not None else None
        return run_block(self.backbone.blocks[layer - 1], x, stats, self.bn_training)  # type: ignore[arg-type]

    def path_weights(self, layer: int) -> Tensor:
        """alpha = softmax(a) over the layer's kept paths, in :meth:`Plan.paths` order (empty if none)."""
        key = str(layer)
        if key not in self.alphas:
            return torch.zeros(0, device=self.head.weight.device)
        return torch.softmax(self.alphas[key], dim=0)

    def proxy(self, layer: int, src: int) -> Proxy:
        """The proxy A_src^layer (KeyError if the plan does not keep it)."""
        return self.proxies[_pkey(layer, src)]  # type: ignore[return-value]

    def branches(self, layer: int, nodes: list[Tensor | None]) -> list[Tensor]:
        """Outputs of the layer's kept paths, in alpha order."""
        out = []
        for src in self.plan.paths(layer):
            if src is None:
                out.append(self.block(layer, nodes[layer - 1]))  # type: ignore[arg-type]
            else:
                out.append(self.proxy(layer, src)(nodes[src]))
        return out

    def mix(self, layer: int, branches: list[Tensor]) -> Tensor:
        """``ReLU(sum_i alpha_i * path_i)``: the node's one ReLU (the block path enters un-rectified)."""
        w = self.path_weights(layer)
        acc = branches[0] * w[0]
        for i in range(1, len(branches)):
            acc = acc + branches[i] * w[i]
        return F.relu(acc)

    def layer(self, layer: int, nodes: list[Tensor | None]) -> Tensor:
        return self.mix(layer, self.branches(layer, nodes))

    def forward_nodes(self, x: Tensor) -> list[Tensor | None]:
        """All node activations (None for nodes the plan leaves without inputs)."""
        nodes: list[Tensor | None] = [self.stem(x)]
        for l, lp in enumerate(self.plan.layers, start=1):
            nodes.append(self.layer(l, nodes) if lp.num_paths else None)
        return nodes

    def classify(self, node: Tensor) -> Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(node, 1), 1))

    def forward(self, x: Tensor) -> Tensor:
        last = self.forward_nodes(x)[-1]
        assert last is not None  # Plan.validate guarantees it
        return self.classify(last)

    # -- structure -------------------------------------------------------------------------

    def task_tensors(self) -> dict[str, Tensor]:
        """Everything the task owns: exactly what a TaskPack stores."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def with_plan(self, plan: Plan) -> TailoredNet:
        """A copy restricted to ``plan``, whose paths must be a subset of this net's.

        Kept paths keep their logits ``a``, and each layer's softmax is taken over the surviving paths
        only, so their weights are renormalised to sum to one: ``alpha_i' = alpha_i / sum_kept alpha``.
        The pruned net is therefore not this net with the dropped paths' weights set to zero (that sum
        would be smaller); fine-tuning adapts it to the renormalised mix.
        """
        new = TailoredNet(self.backbone, plan, self.num_classes).to(self.head.weight.device)
        src = self.state_dict()
        state = {}
        for k in new.state_dict():
            if k.startswith("alphas."):
                l = int(k.split(".")[1])
                old_paths, keep = self.plan.paths(l), plan.paths(l)
                state[k] = src[k][[old_paths.index(p) for p in keep]]
            else:
                state[k] = src[k]
        new.load_state_dict(state)
        return new


def _pkey(layer: int, src: int) -> str:
    return f"{layer}_{src}"


TensorSpec = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def task_tensor_spec(backbone: Backbone, plan: Plan, num_classes: int) -> TensorSpec:
    """Name -> (dtype, shape) of every tensor ``TailoredNet(backbone, plan, num_classes).state_dict()`` holds,
    computed without building any module (a pack is validated against it on every cold load).
    tests/blockstore/test_tailored.py keeps it equal to the real state dict."""
    f32 = torch.float32
    spec: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for l, lp in enumerate(plan.layers, start=1):
        if lp.num_paths:
            spec[f"alphas.{l}"] = (f32, (lp.num_paths,))
        for p in lp.proxies:
            key = f"proxies.{_pkey(l, p.src)}"
            for name, entry in proxy_tensor_spec(p.in_channels, p.out_channels, plan.bottleneck).items():
                spec[f"{key}.{name}"] = entry
    if plan.task_bn:
        stem = (f32, (backbone.net.bn1.num_features,))
        spec["norms.stem.bn1.running_mean"] = spec["norms.stem.bn1.running_var"] = stem
        blocks = backbone.blocks
        for l in plan.blocks_kept:
            for name, m in block_bns(blocks[l - 1]).items():
                key = f"norms.b{l}.{name}"
                spec[f"{key}.running_mean"] = spec[f"{key}.running_var"] = (f32, (m.num_features,))
    channels = backbone.spec.nodes[-1].channels
    spec["head.weight"] = (f32, (num_classes, channels))
    spec["head.bias"] = (f32, (num_classes,))
    return spec


def bn_buffers_per_block(backbone: Backbone) -> list[int]:
    """Per-task BN statistic counts: index 0 the stem, index l block G_l (for Plan.cost)."""
    net = backbone.net
    counts = [2 * net.bn1.num_features]
    for blk in backbone.blocks:
        counts.append(sum(2 * m.num_features for m in blk.modules() if isinstance(m, nn.BatchNorm2d)))
    return counts


__all__ += ["bn_buffers_per_block", "task_tensor_spec"]
