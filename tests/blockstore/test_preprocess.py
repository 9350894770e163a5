"""Preprocess: EXIF orientation is applied in the one place trainer and server decode through."""

from __future__ import annotations

import io

import torch
from PIL import Image

from blockstore import IMAGENET_NORMALIZATION, Preprocess
from tests.exif_images import rotated_jpeg, upright_png


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_to_uint8_turns_tagged_photos_upright():
    pre = Preprocess(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channels=3)
    for orientation in (3, 6, 8):
        jpeg = rotated_jpeg(orientation)
        got = pre.to_uint8(_open(jpeg))
        assert torch.equal(got, pre.to_uint8(_open(upright_png(jpeg))))
        assert not torch.equal(got, pre.to_uint8(_open(upright_png(jpeg, apply_exif=False))))


def test_grey_tasks_can_use_a_three_channel_normalisation():
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    out = Preprocess(8, *IMAGENET_NORMALIZATION, channels=1).normalize(x)
    grey = x.float() / 255
    for c in range(3):
        want = (grey[:, 0] - IMAGENET_NORMALIZATION[0][c]) / IMAGENET_NORMALIZATION[1][c]
        assert torch.allclose(out[:, c], want)
    assert Preprocess.from_json(Preprocess(8, *IMAGENET_NORMALIZATION, channels=1).to_json()).mean == (
        IMAGENET_NORMALIZATION[0])
