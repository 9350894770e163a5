"""The input normalisation a task inherits from its backbone, read from the backbone's metadata only.

A backbone imported from torchvision records ImageNet's mean and std; its weights expect inputs scaled
that way, so new tasks default to it instead of measuring their own on the task's images.
"""

from __future__ import annotations

from pathlib import Path

from blockstore import BackboneInfo, Normalization, open_store
from blockstore.errors import BackboneError, UnsupportedFormat

__all__ = ["backbone_normalization"]


def backbone_normalization(store_url: str | None, backbone_id: str | None,
                           backbone_file: Path | None) -> Normalization | None:
    """The normalisation recorded by the backbone a stage will use (``backbone_file``, else the store's
    ``backbone_id`` or default), or None when it records none (a plain state dict file has no metadata)."""
    if backbone_file is not None:
        if backbone_file.suffix != ".safetensors" or not backbone_file.is_file():
            return None
        try:
            return BackboneInfo.from_bytes(backbone_file.read_bytes()).normalization
        except (UnsupportedFormat, BackboneError):
            return None  # a plain state dict, or damage that loading the backbone reports properly
    store = open_store(store_url)
    try:
        return BackboneInfo.from_bytes(store.get_backbone(backbone_id)).normalization
    finally:
        store.close()
