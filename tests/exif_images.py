"""Real JPEGs carrying an EXIF orientation tag, as phones write them, for the decoding tests."""

from __future__ import annotations

import io

from PIL import Image, ImageOps

__all__ = ["rotated_jpeg", "upright_png"]


def rotated_jpeg(orientation: int = 6, size: tuple[int, int] = (48, 32)) -> bytes:
    """An asymmetric picture stored sideways, with the tag that tells a viewer how to turn it."""
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.paste((250, 30, 30), (0, 0, size[0] // 3, size[1] // 2))  # a red corner makes every turn distinct
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def upright_png(jpeg: bytes, *, apply_exif: bool = True) -> bytes:
    """The JPEG's decoded pixels (turned upright, or as stored), re-encoded losslessly without EXIF."""
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    if apply_exif:
        img = ImageOps.exif_transpose(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
