"""Backbone adapters: a torchvision ResNet split into ``stem -> [G_1..G_L] -> head``.

The network keeps torchvision's module tree (``conv1``, ``layer1.0``, ``fc``...), so a torchvision
checkpoint loads as is, and the split is a view over it: ``stem_modules`` and ``blocks``.
Construction does no I/O; weights come from :mod:`blockstore.weights`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from . import st_io
from .errors import BackboneError, CorruptPack, UnsupportedFormat
from .flops import count_flops, count_params

__all__ = ["ARCHS", "STEMS", "Backbone", "BackboneConfig", "BackboneSpec", "BlockSpec", "NodeSpec"]

BACKBONE_FORMAT = "nettailor-backbone/1"
ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),  # one block per stage: tests and quick experiments
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
# imagenet: 7x7 stride-2 conv + max-pool (torchvision).  3x3s1: CIFAR-style, for 32 px inputs.
# 3x3s2: 3x3 stride-2 conv without max-pool, a cheaper small-image stem.
STEMS = ("imagenet", "3x3s1", "3x3s2")


@dataclass(frozen=True)
class BackboneConfig:
    arch: str = "resnet18"
    stem: str = "imagenet"
    input_size: int = 224
    num_classes: int = 1000  # the source task's classifier, kept for pre-training only

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise BackboneError(f"unknown arch {self.arch!r}; choose one of {sorted(ARCHS)}")
        if self.stem not in STEMS:
            raise BackboneError(f"unknown stem {self.stem!r}; choose one of {list(STEMS)}")
        if self.input_size < 8:
            raise BackboneError(f"input_size {self.input_size} is too small")
        if self.num_classes < 1:
            raise BackboneError("num_classes must be positive")


@dataclass(frozen=True)
class NodeSpec:
    """Node p: the stem output (p = 0) or the output of layer p."""

    index: int
    channels: int
    size: int  # spatial side at the nominal input size
    scale: int  # total stride relative to the stem output


@dataclass(frozen=True)
class BlockSpec:
    """Universal block G_l (l = 1..L) maps node l-1 to node l."""

    index: int
    in_channels: int
    out_channels: int
    stride: int
    in_size: int
    out_size: int
    flops: int
    params: int


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    stem: str
    input_size: int
    nodes: tuple[NodeSpec, ...]
    blocks: tuple[BlockSpec, ...]
    stem_flops: int
    stem_params: int
    head_flops: int
    head_params: int

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def blocks_flops(self) -> int:
        return sum(b.flops for b in self.blocks)

    @property
    def blocks_params(self) -> int:
        return sum(b.params for b in self.blocks)

    @property
    def total_flops(self) -> int:
        return self.stem_flops + self.blocks_flops + self.head_flops

    def complexity(self, layer: int) -> float:
        """Normalised complexity of block ``layer`` (1-based): its FLOPs over the backbone's total."""
        return self.blocks[layer - 1].flops / self.total_flops


class Backbone(nn.Module):
    """A ResNet whose stem and residual blocks are the universal blocks shared by every task."""

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = config or BackboneConfig()
        block, layers = ARCHS[self.config.arch]
        net = ResNet(block, layers, num_classes=self.config.num_classes)
        if self.config.stem != "imagenet":
            stride = 1 if self.config.stem == "3x3s1" else 2
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stride, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self._id: str | None = None
        # Measured once here, at load, and never again: the spec depends on the architecture only (not
        # on the weights), and a lazily cached value would first be computed in whatever thread asked.
        self.spec: BackboneSpec = self._measure_spec()

    @property
    def bottleneck(self) -> bool:
        return ARCHS[self.config.arch][0] is Bottleneck

    @property
    def stem_modules(self) -> nn.Sequential:
        n = self.net
        return nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool)

    @property
    def blocks(self) -> list[BasicBlock | Bottleneck]:
        n = self.net
        return [b for layer in (n.layer1, n.layer2, n.layer3, n.layer4) for b in layer]  # type: ignore[misc]

    @property
    def head(self) -> nn.Linear:
        return self.net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def freeze(self) -> Backbone:
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    @torch.no_grad()
    def _measure_spec(self) -> BackboneSpec:
        """Shapes, FLOPs and parameters per block, measured with one forward at ``input_size``."""
        size = self.config.input_size
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(1, 3, size, size)
            stem_flops, x = count_flops(self.stem_modules, x)
            nodes = [NodeSpec(0, x.shape[1], x.shape[-1], 1)]
            blocks = []
            for i, blk in enumerate(self.blocks, start=1):
                flops, y = count_flops(blk, x)
                stride = int(blk.stride)  # type: ignore[arg-type]
                blocks.append(
                    BlockSpec(i, x.shape[1], y.shape[1], stride, x.shape[-1], y.shape[-1], flops, count_params(blk))
                )
                nodes.append(NodeSpec(i, y.shape[1], y.shape[-1], nodes[-1].scale * stride))
                x = y
        finally:
            self.train(was_training)
        fc = self.net.fc
        return BackboneSpec(
            arch=self.config.arch,
            stem=self.config.stem,
            input_size=size,
            nodes=tuple(nodes),
            blocks=tuple(blocks),
            stem_flops=stem_flops,
            stem_params=count_params(self.net.conv1) + count_params(self.net.bn1),
            head_flops=fc.in_features * fc.out_features,
            head_params=count_params(fc),
        )

    # -- serialisation -------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Deterministic safetensors bytes; their SHA-256 is the backbone's identity."""
        meta = {"format": BACKBONE_FORMAT, "config": json.dumps(asdict(self.config), sort_keys=True)}
        data = st_io.dumps(self.net.state_dict(), meta)
        self._id = hashlib.sha256(data).hexdigest()
        return data

    @property
    def backbone_id(self) -> str:
        """SHA-256 of :meth:`to_bytes`; computed once, since universal blocks are frozen."""
        if self._id is None:
            self.to_bytes()
        assert self._id is not None
        return self._id

    @classmethod
    def from_bytes(cls, data: bytes) -> Backbone:
        try:
            tensors, meta = st_io.loads(data)
        except CorruptPack as e:
            raise BackboneError(f"backbone bytes are damaged: {e.detail}") from None
        if meta.get("format") != BACKBONE_FORMAT:
            raise UnsupportedFormat(f"not a backbone blob (format={meta.get('format')!r}, want {BACKBONE_FORMAT!r})")
        try:
            config = BackboneConfig(**json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BackboneError(f"backbone config metadata is invalid: {e}") from None
        bb = cls(config)
        try:
            bb.net.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise BackboneError(f"backbone tensors do not fit {config.arch}/{config.stem}: {e}") from None
        bb._id = hashlib.sha256(data).hexdigest()
        return bb
