"""Image preprocessing recorded in every pack, so the server sees inputs exactly as training did.

Two steps, shared by trainer and server:
  1. :meth:`Preprocess.to_uint8`: PIL image -> uint8 ``[C, size, size]`` (EXIF orientation applied,
     mode conversion, bilinear resize);
  2. :meth:`Preprocess.normalize`: uint8 batch -> float ``[N, 3, size, size]`` (scale, mean/std,
     grey replicated to the backbone's three channels).

A grey task (``channels = 1``) has one mean and std, applied before the grey plane is replicated, or
three (a backbone's own normalisation, e.g. ImageNet's), applied per channel after it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = ["Preprocess"]

_ORIENTATION = 0x0112  # the EXIF tag; 1 (or none) means the pixels are stored upright


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block says nothing reliable about orientation: keep the pixels as stored
        return 1


@dataclass(frozen=True)
class Preprocess:
    size: int = 32
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    channels: int = 1  # 1: the task sees grey images; 3: colour

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        if len(self.mean) != len(self.std) or len(self.mean) not in {self.channels, 3}:
            raise ValueError("mean and std need one value per channel (or three, one per backbone channel)")
        if self.size < 1 or any(s <= 0 for s in self.std):
            raise ValueError("size and std must be positive")

    def to_uint8(self, img: Image.Image) -> Tensor:
        # A phone stores its photo sideways plus a tag saying how to turn it: turn it, as viewers do.
        if _orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays
        if arr.ndim == 2:
            arr = arr[None]
        else:
            arr = arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def normalize(self, batch: Tensor) -> Tensor:
        """uint8 ``[N, C, H, W]`` -> float32 ``[N, 3, H, W]`` on the batch's device."""
        x = batch.to(torch.float32).div_(255.0)
        if x.shape[1] != len(self.mean):  # a grey image under a backbone's three-channel normalisation
            x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        d = json.loads(text)
        return cls(int(d["size"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])), int(d["channels"]))
