"""Deterministic safetensors container.

``safetensors.torch.save`` writes its ``__metadata__`` map in hash order, so the same pack saved
twice gives different bytes, and a content address (SHA-256) would change for no reason.  This
module writes the same documented format with sorted keys, so equal content gives equal bytes.
Reading goes through the safetensors library itself, which checks offsets and sizes.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import load as st_load

from .errors import CorruptPack

__all__ = ["dumps", "loads", "read_metadata"]

_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_MAX_HEADER = 64 * 1024 * 1024


def dumps(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialise ``tensors`` (any device) and string ``metadata`` to safetensors bytes."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has unsupported dtype {t.dtype}")
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` map of safetensors ``data``, without decoding the tensors.

    It also checks that the payload is exactly as long as the header says, so truncated bytes
    are caught by this cheap read too."""
    if len(data) < 8:
        raise CorruptPack(f"{len(data)} bytes is too short for a safetensors blob")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CorruptPack("safetensors header length points past the end of the data (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptPack(f"safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise CorruptPack("safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CorruptPack("safetensors __metadata__ must map strings to strings")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CorruptPack("safetensors header has a tensor entry without valid data_offsets") from None
    if 8 + n + end != len(data):
        raise CorruptPack(f"safetensors payload should be {8 + n + end} bytes, got {len(data)} (truncated or padded)")
    return meta


def loads(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors ``data`` into CPU tensors and metadata; raise CorruptPack on any damage."""
    meta = read_metadata(data)
    try:
        tensors = st_load(bytes(data))
    except Exception as e:  # the library raises SafetensorError, a plain Exception subclass
        raise CorruptPack(f"safetensors payload is damaged: {e}") from None
    return tensors, meta
