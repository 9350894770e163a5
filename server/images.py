"""Request bodies and images: read with a byte limit while streaming, sniff the format, check the
header's pixel count, and only then decode.

Nothing here trusts the client: the Content-Length header, the content type and the file name are
hints; the magic bytes decide the format, and the running byte count decides the size.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncGenerator

from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .errors import BadImage, ImageTooLarge, PayloadTooLarge, TooManyFiles, UnsupportedMediaType

__all__ = ["decode_image", "read_body", "read_images", "sniff"]

_RAW_TYPES = ("image/", "application/octet-stream")


def sniff(data: bytes) -> str | None:
    """PIL format name from the magic bytes: JPEG, PNG or WEBP; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with PayloadTooLarge as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the upload is {int(declared)} bytes; the limit is {limit}")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"the upload passed the limit of {limit} bytes")
    return bytes(buf)


async def read_images(request: Request, *, field: str, max_files: int, max_file_bytes: int) -> list[bytes]:
    """Image bytes from a multipart body (field ``field``, repeated for a batch) or from a raw body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    total_limit = max_file_bytes * max_files + 64 * 1024 * max_files  # room for multipart framing
    if ctype == "multipart/form-data":
        body = await read_body(request, total_limit)

        async def chunks() -> AsyncGenerator[bytes, None]:
            yield body

        # The parser itself, not Request.form(): inside an app, form() turns every parse error into
        # a 400 before this code could answer the documented 422.
        parser = MultiPartParser(request.headers, chunks(), max_files=max_files, max_fields=max_files + 16)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            if e.message.startswith("Too many files"):
                raise TooManyFiles(f"at most {max_files} file(s) per request; send more in several requests") \
                    from None
            raise BadImage(f"malformed multipart body: {e.message}") from None
        try:
            parts = [p for p in form.getlist(field) if isinstance(p, UploadFile)]
            if not parts:
                raise BadImage(f"the multipart body has no file field {field!r}")
            out = []
            for p in parts:
                data = await p.read()
                if len(data) > max_file_bytes:
                    raise PayloadTooLarge(f"file {p.filename!r} is {len(data)} bytes; the limit is {max_file_bytes}")
                out.append(data)
            return out
        finally:
            await form.close()
    if ctype and not ctype.startswith(_RAW_TYPES):
        raise UnsupportedMediaType(f"content type {ctype!r}: send an image as multipart field {field!r} or as a "
                                   "raw body (image/jpeg, image/png, image/webp or application/octet-stream)")
    if max_files > 1:
        raise UnsupportedMediaType(f"a batch is sent as multipart/form-data with repeated {field!r} fields")
    return [await read_body(request, max_file_bytes)]


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """A fully decoded PIL image.  The header's width x height is checked before any pixel is decoded."""
    if not data:
        raise BadImage("the image is empty")
    fmt = sniff(data)
    if fmt is None:
        raise UnsupportedMediaType("the body is not a JPEG, PNG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"the image header claims too many pixels: {e}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"cannot read the {fmt} header: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    if w < 1 or h < 1:
        raise BadImage(f"the image is {w}x{h}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise BadImage(f"the {fmt} image is truncated or corrupt: {e}") from None
    return img
