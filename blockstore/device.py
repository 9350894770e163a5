"""The device-resident side: the frozen universal blocks, loaded once onto the chosen device."""

from __future__ import annotations

import os

import torch

from .backbone import Backbone
from .errors import BackboneError, BackboneMismatch
from .stores.base import Store

__all__ = ["load_resident", "resolve_device"]


def resolve_device(name: str | None = None) -> torch.device:
    """``name``, else ``NETTAILOR_DEVICE``, else CUDA when present, else CPU."""
    name = name or os.environ.get("NETTAILOR_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise BackboneError(f"invalid device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device {name!r} was asked for, but CUDA is not available here")
    return dev


def load_resident(store: Store, backbone_id: str | None = None, device: str | torch.device | None = None) -> Backbone:
    """Fetch a backbone from ``store`` (the default one when ``backbone_id`` is None), verify that its
    bytes hash to the id it is stored under, freeze it and move it to ``device`` in inference mode."""
    data = store.get_backbone(backbone_id)
    bb = Backbone.from_bytes(data)
    if backbone_id is not None and bb.backbone_id != backbone_id:
        raise BackboneMismatch(f"store returned backbone {bb.backbone_id[:12]}... for id {backbone_id[:12]}...")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return bb.freeze().eval().to(dev)
