"""Backbone adapters: a torchvision ResNet split into ``stem -> [G_1..G_L] -> head``.

The network keeps torchvision's module tree (``conv1``, ``layer1.0``, ``fc``...), so a torchvision
checkpoint loads as is, and the split is a view over it: ``stem_modules`` and ``blocks``.
Construction does no I/O; weights come from :mod:`blockstore.weights`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from . import st_io
from .errors import BackboneError, CorruptPack, UnsupportedFormat
from .flops import count_flops, count_params

__all__ = [
    "ARCHS", "STEMS", "Backbone", "BackboneConfig", "BackboneInfo", "BackboneSpec", "BlockSpec", "Normalization",
    "NodeSpec", "validate_backbone_bytes",
]

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
# The input normalisation a backbone's weights were trained with: per-channel (mean, std) in [0, 1] units.
Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]


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


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone blob's metadata says, read without decoding its tensors."""

    config: BackboneConfig
    source: str | None
    normalization: Normalization | None

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> BackboneInfo:
        """Raises UnsupportedFormat when ``meta`` is not a backbone blob's, BackboneError when it is damaged."""
        if meta.get("format") != BACKBONE_FORMAT:
            raise UnsupportedFormat(f"not a backbone blob (format={meta.get('format')!r}, want {BACKBONE_FORMAT!r})")
        try:
            config = BackboneConfig(**json.loads(meta["config"]))
            norm = json.loads(meta["normalization"]) if "normalization" in meta else None
            norm = None if norm is None else check_normalization((norm["mean"], norm["std"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BackboneError(f"backbone metadata is invalid: {type(e).__name__}: {e}") from None
        return cls(config, meta.get("source"), norm)

    @classmethod
    def from_bytes(cls, data: bytes) -> BackboneInfo:
        try:
            return cls.from_metadata(st_io.read_metadata(data))
        except CorruptPack as e:
            raise BackboneError(f"backbone bytes are damaged: {e.detail}") from None


def check_normalization(value: object) -> Normalization:
    """``value`` as a :data:`Normalization`: two sequences of three finite numbers, stds positive."""
    try:
        pair: Any = value
        mean, std = (tuple(float(v) for v in seq) for seq in pair)
    except (TypeError, ValueError):
        raise BackboneError(f"a normalisation is (mean, std) with three values each, not {value!r}") from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise BackboneError(f"a normalisation needs three finite means and three positive stds, not {value!r}")
    return mean, std  # type: ignore[return-value]


class Backbone(nn.Module):
    """A ResNet whose stem and residual blocks are the universal blocks shared by every task.

    ``source`` (where the weights came from, e.g. ``torchvision:ResNet18_Weights.IMAGENET1K_V1``) and
    ``normalization`` (the input mean and std the weights expect, or None) are recorded in the blob's
    metadata; new tasks default to that normalisation.
    """

    def __init__(self, config: BackboneConfig | None = None, *, source: str | None = None,
                 normalization: Normalization | None = None) -> None:
        super().__init__()
        self.config = config or BackboneConfig()
        self.source = source
        self.normalization = None if normalization is None else check_normalization(normalization)
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
        """Deterministic safetensors bytes; their SHA-256 is the backbone's identity.

        ``source`` and ``normalization`` are written only when set, so a backbone without them keeps
        the bytes (and the id) it had before they existed."""
        meta = {"format": BACKBONE_FORMAT, "config": json.dumps(asdict(self.config), sort_keys=True)}
        if self.source is not None:
            meta["source"] = self.source
        if self.normalization is not None:
            meta["normalization"] = json.dumps({"mean": self.normalization[0], "std": self.normalization[1]})
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
        """Parse and validate a backbone blob: format, config, source, normalisation, every tensor.

        Raises UnsupportedFormat for safetensors bytes that are not a backbone blob (a pack, a plain
        state dict) and BackboneError for anything else wrong."""
        try:
            tensors, meta = st_io.loads(data)
        except CorruptPack as e:
            raise BackboneError(f"backbone bytes are damaged: {e.detail}") from None
        info = BackboneInfo.from_metadata(meta)
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            bb = cls(info.config, source=info.source, normalization=info.normalization)
        config = info.config
        try:
            bb.net.load_state_dict(tensors, strict=True, assign=True)
        except RuntimeError as e:
            raise BackboneError(f"backbone tensors do not fit {config.arch}/{config.stem}: {e}") from None
        bb._id = hashlib.sha256(data).hexdigest()
        return bb


def validate_backbone_bytes(data: bytes) -> Backbone:
    """The backbone ``data`` holds, or BackboneError: what every store checks before keeping bytes
    as a backbone, so that a ``.pth`` or a pack can never sit under a ``backbone_id``."""
    try:
        return Backbone.from_bytes(data)
    except (UnsupportedFormat, BackboneError) as e:
        raise BackboneError(f"not a NetTailor backbone blob ({e.detail}); bring weights in with "
                            "'nettailor backbone import FILE --arch ARCH' or 'nettailor pretrain'") from None
