"""Turning whatever a caller holds into upload bytes plus a content type.

Accepted: a path, bytes, a binary file object, a PIL image (Pillow installed) or a NumPy array
(HxW, HxWx1, HxWx3 or HxWx4, uint8).  Encoded bytes are sent as they are, so a JPEG from a camera
is not decoded on the robot; pixels (PIL, NumPy) are encoded losslessly to PNG.

Neither Pillow nor NumPy is imported unless the caller already did: an object can only be a PIL
image or an array if its module is loaded.
"""

from __future__ import annotations

import io
import os
import sys
from typing import IO, Any, Union

from .errors import ImageEncodingError

__all__ = ["ImageInput", "encode_image", "sniff_content_type"]

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Any]


def sniff_content_type(data: bytes) -> str:
    """The image type from its magic bytes; ``application/octet-stream`` when it is none we know."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "application/octet-stream": "bin"}


def _is_pil(obj: Any) -> bool:
    mod = sys.modules.get("PIL.Image")
    return mod is not None and isinstance(obj, mod.Image)


def _is_ndarray(obj: Any) -> bool:
    mod = sys.modules.get("numpy")
    return mod is not None and isinstance(obj, mod.ndarray)


def _pil_to_png(img: Any) -> bytes:
    if img.mode not in ("L", "RGB", "RGBA"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _array_to_png(arr: Any) -> bytes:
    if str(arr.dtype) != "uint8":
        raise ImageEncodingError(f"a NumPy image must be uint8, not {arr.dtype} (scale and cast it first)")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageEncodingError(f"a NumPy image must be HxW, HxWx1, HxWx3 or HxWx4, not shape {arr.shape}")
    try:
        from PIL import Image
    except ImportError as e:
        raise ImageEncodingError("sending a NumPy array needs Pillow: pip install 'nettailor-client[images]'") from e
    return _pil_to_png(Image.fromarray(arr))


def _read(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if _is_pil(image):
        return _pil_to_png(image)
    if _is_ndarray(image):
        return _array_to_png(image)
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, str):
            raise ImageEncodingError("the file object is open in text mode: open it with 'rb'")
        return bytes(data)
    raise ImageEncodingError(
        f"cannot send a {type(image).__name__} as an image: give a path, bytes, a binary file, "
        "a PIL image or a uint8 NumPy array"
    )


def encode_image(image: ImageInput, name: str = "image") -> tuple[str, bytes, str]:
    """``(filename, bytes, content_type)``, ready for an httpx multipart ``files`` entry."""
    data = _read(image)
    ctype = sniff_content_type(data)
    if isinstance(image, (str, os.PathLike)):
        name = os.path.splitext(os.path.basename(os.fspath(image)))[0] or name
    return f"{name}.{_EXT[ctype]}", data, ctype
