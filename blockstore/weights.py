"""Where a backbone's weights come from: torchvision's enums (online), a local file, or random init.

This is an edge module: it does the I/O that :class:`Backbone`'s constructor never does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .backbone import Backbone, BackboneConfig
from .errors import BackboneError, WeightsUnavailable

__all__ = ["load_backbone"]

_TORCHVISION_ENUMS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}


def load_backbone(config: BackboneConfig | None, weights: str | None = None, *, seed: int = 0) -> Backbone:
    """Build a backbone and fill its weights.

    ``weights`` is one of:
      * ``None`` or ``"random"``: seeded random initialisation (tests, or pre-training from scratch);
      * ``"torchvision"`` or ``"torchvision:IMAGENET1K_V1"``: download torchvision's ImageNet weights;
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
    if weights.startswith("torchvision"):
        return _from_torchvision(config, weights.partition(":")[2] or "DEFAULT")
    raise BackboneError(f"unknown weights {weights!r}")


def _from_torchvision(config: BackboneConfig, variant: str) -> Backbone:
    import torchvision.models as tvm

    if config.stem != "imagenet" or config.num_classes != 1000:
        raise BackboneError("torchvision weights need stem='imagenet' and num_classes=1000")
    enum = getattr(tvm, _TORCHVISION_ENUMS[config.arch])
    try:
        state = enum[variant].get_state_dict(progress=False)
    except KeyError:
        names = [w.name for w in enum]
        raise WeightsUnavailable(f"{enum.__name__} has no variant {variant!r}; try one of {names}") from None
    except Exception as e:  # URLError, socket errors, hub cache errors: all mean "could not get them"
        raise WeightsUnavailable(
            f"could not download torchvision weights {enum.__name__}.{variant} ({type(e).__name__}: {e}). "
            f"Offline? Download them elsewhere and pass the file instead: --weights path/to/{config.arch}.pth "
            f"(or .safetensors), or pre-train a universal backbone with 'nettailor pretrain'."
        ) from None
    bb = Backbone(config)
    bb.net.load_state_dict(state)
    return bb


def _from_file(config: BackboneConfig | None, path: Path) -> Backbone:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        from . import st_io
        from .errors import CorruptPack

        try:
            tensors, meta = st_io.loads(data)
        except CorruptPack as e:
            raise BackboneError(f"{path} is not a readable safetensors file: {e.detail}") from None
        if meta.get("format", "").startswith("nettailor-backbone/"):
            bb = Backbone.from_bytes(data)
            if config is not None and bb.config != config:
                raise BackboneError(f"{path} holds a {bb.config} backbone, not the requested {config}")
            return bb
        state = tensors
    elif path.suffix in (".pth", ".pt"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BackboneError(f"cannot read {path} as a PyTorch state dict: {e}") from None
        if isinstance(loaded, dict) and "state_dict" in loaded:
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict):
            raise BackboneError(f"{path} does not hold a state dict")
        state = loaded
    else:
        raise BackboneError(f"unknown weights file type {path.suffix!r}; use .pth, .pt or .safetensors")
    if config is None:
        raise BackboneError(f"{path} is a plain state dict: say which arch and stem it is for")
    bb = Backbone(config)
    try:
        bb.net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BackboneError(f"{path} does not fit {config.arch} with the {config.stem} stem: {e}") from None
    return bb
