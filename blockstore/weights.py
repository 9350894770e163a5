"""Where a backbone's weights come from: torchvision's weight enums, a local file, or random init.

This is an edge module: it does the I/O that :class:`Backbone`'s constructor never does.

* :func:`import_backbone` is what ``nettailor backbone import`` runs: it reads a source, works out the
  architecture when it can, and records the source and the input normalisation in the backbone.
* :func:`load_backbone` builds a backbone for a known configuration (tests, pre-training, and the
  trainer's ``--backbone-file``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from . import st_io
from .backbone import ARCHS, Backbone, BackboneConfig, Normalization, check_normalization
from .errors import BackboneError, CorruptPack, WeightsUnavailable

__all__ = ["IMAGENET_NORMALIZATION", "import_backbone", "infer_config", "load_backbone", "torchvision_weights"]

IMAGENET_NORMALIZATION: Normalization = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_TORCHVISION_ENUMS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}
_TV_SOURCE = re.compile(r"^torchvision(?::(?P<enum>[A-Za-z0-9_]+)(?:\.(?P<variant>[A-Za-z0-9_]+))?)?$")
NormalizationChoice = Normalization | None | Literal["auto"]


def load_backbone(config: BackboneConfig | None, weights: str | None = None, *, seed: int = 0) -> Backbone:
    """Build a backbone and fill its weights.

    ``weights`` is one of:
      * ``None`` or ``"random"``: seeded random initialisation (tests, or pre-training from scratch);
      * ``"torchvision"`` or ``"torchvision:IMAGENET1K_V1"``: torchvision's ImageNet weights (its cache, or
        a download where the network allows);
      * a path to a ``.pth``/``.pt`` state dict, a ``.safetensors`` state dict, or a NetTailor backbone blob.

    ``config`` may be None only for a NetTailor backbone blob, which records its own configuration.
    """
    if weights is not None and not weights.startswith("torchvision") and weights != "random":
        return _from_file(config, Path(weights))
    if config is None:
        raise BackboneError("a backbone configuration is needed unless loading a NetTailor backbone file")
    if weights in (None, "random"):
        torch.manual_seed(seed)
        return Backbone(config)
    assert weights is not None
    if config.stem != "imagenet" or config.num_classes != 1000:
        raise BackboneError("torchvision weights need stem='imagenet' and num_classes=1000")
    variant = weights.partition(":")[2] or "DEFAULT"
    return _from_torchvision(torchvision_weights(f"{_TORCHVISION_ENUMS[config.arch]}.{variant}"), config.input_size)


def import_backbone(source: str, *, arch: str | None = None, stem: str | None = None, size: int | None = None,
                    normalization: NormalizationChoice = "auto", download: bool = True) -> Backbone:
    """A backbone from ``source``, with the source and the normalisation recorded in it.

    ``source`` is ``torchvision:ResNet50_Weights.IMAGENET1K_V2`` (or ``torchvision:resnet50`` for the
    default variant), a torchvision-format ``.pth``/``.pt`` state dict, or a ``.safetensors`` file (a plain
    state dict or a NetTailor backbone blob).  ``arch`` and ``stem`` are read from the weights when not
    given (a 3x3 stem needs ``stem``, since its stride is not in the weights) and checked when given.
    ``size`` is the nominal input side that FLOPs are measured at (default 224 with the ImageNet stem,
    else 32); a task must use the same.  ``normalization="auto"`` takes torchvision's (ImageNet) for
    torchvision weights, a blob's own, and none for a plain file: new tasks then measure their own.
    ``download=False`` refuses to fetch torchvision weights that are not in its cache.
    """
    if source.startswith("torchvision"):
        weights = torchvision_weights(source.partition(":")[2] or "", download=download)
        tv_arch = _arch_of_enum(type(weights).__name__)
        if arch not in (None, tv_arch) or stem not in (None, "imagenet"):
            raise BackboneError(f"{source} holds {tv_arch} weights with the ImageNet stem, not "
                                f"{arch or tv_arch}/{stem or 'imagenet'}")
        return _from_torchvision(weights, size or 224, normalization)
    path = Path(source)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist (a source is a .pth, .pt or .safetensors "
                                 "file, or torchvision:ResNet50_Weights.IMAGENET1K_V2)")
    data = path.read_bytes()
    blob = _backbone_blob(path, data)
    if blob is not None:
        wanted = {"arch": arch, "stem": stem, "input_size": size}
        clash = {k: v for k, v in wanted.items() if v is not None and getattr(blob.config, k) != v}
        if clash:
            raise BackboneError(f"{path} is a NetTailor backbone blob for {blob.config}, not {clash}")
        if normalization != "auto" and normalization != blob.normalization:
            raise BackboneError(f"{path} is a NetTailor backbone blob that records normalisation "
                                f"{blob.normalization}; it is stored as it is")
        return blob
    state = _read_state_dict(path, data)
    config = infer_config(state, arch=arch, stem=stem, size=size, name=str(path))
    source = f"file:{path.name} sha256={hashlib.sha256(data).hexdigest()}"
    norm = None if normalization == "auto" else normalization
    return _fill(Backbone(config, source=source, normalization=norm), state, str(path))


def torchvision_weights(name: str, *, download: bool = True) -> Any:
    """The torchvision weights enum member ``name`` (``ResNet50_Weights.IMAGENET1K_V2``, ``resnet50``,
    ``ResNet18_Weights``: the default variant), checked against torchvision's cache when ``download``
    is False."""
    import torchvision.models as tvm

    m = _TV_SOURCE.match(f"torchvision:{name}" if name else "torchvision")
    if m is None or not m.group("enum"):
        raise BackboneError(f"torchvision:{name}: name a weights enum, e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2")
    enum_name = _TORCHVISION_ENUMS.get(m.group("enum").lower(), m.group("enum"))
    if enum_name not in _TORCHVISION_ENUMS.values():
        raise BackboneError(f"torchvision:{name}: NetTailor adapts {sorted(_TORCHVISION_ENUMS.values())}")
    enum = getattr(tvm, enum_name)
    variant = m.group("variant") or "DEFAULT"
    try:
        weights = enum[variant]
    except KeyError:
        names = [w.name for w in enum]
        raise WeightsUnavailable(f"{enum_name} has no variant {variant!r}; try one of {names}") from None
    if not download and not _cached_file(weights.url).is_file():
        raise WeightsUnavailable(f"torchvision weights {enum_name}.{weights.name} are not in torchvision's cache "
                                 f"({_cached_file(weights.url)}) and downloading was turned off")
    return weights


def _cached_file(url: str) -> Path:
    """Where torchvision's ``load_state_dict_from_url`` keeps ``url``: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _arch_of_enum(enum_name: str) -> str:
    return next(a for a, e in _TORCHVISION_ENUMS.items() if e == enum_name)


def _from_torchvision(weights: Any, size: int, normalization: NormalizationChoice = "auto") -> Backbone:
    name = f"{type(weights).__name__}.{weights.name}"
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as e:  # URLError, socket errors, hub cache errors: all mean "could not get them"
        arch = _arch_of_enum(type(weights).__name__)
        raise WeightsUnavailable(
            f"could not download torchvision weights {name} ({type(e).__name__}: {e}). Offline? Download "
            f"{weights.url} elsewhere and either put it in torchvision's cache ({_cached_file(weights.url)}) or "
            f"import the file: nettailor backbone import path/to/{arch}.pth --arch {arch}"
        ) from None
    if normalization == "auto":  # what torchvision's own inference transforms use (ImageNet's)
        transforms = weights.transforms()
        normalization = check_normalization((transforms.mean, transforms.std))
    config = BackboneConfig(_arch_of_enum(type(weights).__name__), "imagenet", size, 1000)
    return _fill(Backbone(config, source=f"torchvision:{name}", normalization=normalization), state, name)


def infer_config(state: Mapping[str, Tensor], *, arch: str | None = None, stem: str | None = None,
                 size: int | None = None, name: str = "the state dict") -> BackboneConfig:
    """The configuration a torchvision-format ResNet state dict fits, checked against what was asked."""
    try:
        conv1 = state["conv1.weight"]
        classes = int(state["fc.weight"].shape[0])
    except KeyError as e:
        raise BackboneError(f"{name} is not a torchvision ResNet state dict (no {e.args[0]!r})") from None
    depth = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in state
    found = next((a for a, (blk, layers) in ARCHS.items()
                  if layers == depth and (blk.expansion == 4) == bottleneck), None)
    if found is None:
        raise BackboneError(f"{name} has {depth} blocks per stage ({'bottleneck' if bottleneck else 'basic'}), "
                            f"which is none of {sorted(ARCHS)}")
    if arch is not None and arch != found:
        raise BackboneError(f"{name} holds {found} weights, not {arch}")
    kernel = int(conv1.shape[-1])
    if kernel == 7 and stem not in (None, "imagenet"):
        raise BackboneError(f"{name} has the ImageNet 7x7 stem, not {stem}")
    if kernel == 3 and stem not in ("3x3s1", "3x3s2"):
        raise BackboneError(f"{name} has a 3x3 stem: say which with --stem 3x3s1 or --stem 3x3s2")
    if kernel not in (3, 7):
        raise BackboneError(f"{name} has a {kernel}x{kernel} stem, which no NetTailor stem fits")
    stem = stem or "imagenet"
    return BackboneConfig(found, stem, size or (224 if stem == "imagenet" else 32), classes)


def _fill(bb: Backbone, state: Mapping[str, Tensor], name: str) -> Backbone:
    try:
        bb.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BackboneError(f"{name} does not fit {bb.config.arch} with the {bb.config.stem} stem: {e}") from None
    return bb


def _backbone_blob(path: Path, data: bytes) -> Backbone | None:
    """The NetTailor backbone in ``data``, or None when it is not a backbone blob."""
    if path.suffix != ".safetensors":
        return None
    try:
        meta = st_io.read_metadata(data)
    except CorruptPack as e:
        raise BackboneError(f"{path} is not a readable safetensors file: {e.detail}") from None
    return Backbone.from_bytes(data) if meta.get("format", "").startswith("nettailor-backbone/") else None


def _read_state_dict(path: Path, data: bytes) -> dict[str, Tensor]:
    """A plain state dict from ``.safetensors`` or ``.pth``/``.pt`` bytes (never unpickling code)."""
    if path.suffix == ".safetensors":
        try:
            state, _ = st_io.loads(data)
        except CorruptPack as e:
            raise BackboneError(f"{path} is not a readable safetensors file: {e.detail}") from None
    elif path.suffix in (".pth", ".pt"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BackboneError(f"cannot read {path} as a PyTorch state dict: {e}") from None
        for key in ("state_dict", "model"):  # training checkpoints wrap the weights
            if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                loaded = loaded[key]
        if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
            raise BackboneError(f"{path} does not hold a state dict of tensors")
        state = loaded
    else:
        raise BackboneError(f"unknown weights file type {path.suffix!r}; use .pth, .pt or .safetensors")
    # DataParallel / DistributedDataParallel checkpoints prefix every key with "module."
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _from_file(config: BackboneConfig | None, path: Path) -> Backbone:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    data = path.read_bytes()
    blob = _backbone_blob(path, data)
    if blob is not None:
        if config is not None and blob.config != config:
            raise BackboneError(f"{path} holds a {blob.config} backbone, not the requested {config}")
        return blob
    if config is None:
        raise BackboneError(f"{path} is a plain state dict: say which arch and stem it is for")
    return _fill(Backbone(config), _read_state_dict(path, data), str(path))
