"""The Open Inference Protocol's tensors: decode an inference request, encode its answer.

One task is one model.  It takes exactly one input:

* ``image``: BYTES ``[N]`` (or ``[N, 1]``), each element an encoded JPEG, PNG or WebP image;
* ``input``: FP32 ``[N, 3, size, size]`` already preprocessed as the model metadata says
  (``[N, 1, size, size]`` is accepted for a grey task).

It answers ``probabilities`` (FP32 ``[N, classes]``) and ``labels`` (BYTES ``[N, k]``, most probable
first; ``k`` is the request parameter ``top_k``, default 5, at most the number of classes).

Tensors travel as JSON ``data`` (BYTES elements base64, since JSON cannot carry raw bytes) or with
the binary tensor data extension: the JSON header is followed by raw tensors, its length is in the
``Inference-Header-Content-Length`` header, and each tensor's ``parameters.binary_data_size`` gives
its bytes (BYTES elements are 4-byte little-endian lengths followed by the bytes).  Outputs are raw
when the request asks with ``parameters.binary_data_output`` or an output's ``parameters.binary_data``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydantic
import torch
from torch import Tensor

from blockstore import Preprocess

from .errors import BadTensor
from .inference import Inferred
from .schemas_v2 import InferenceRequest, RequestInput, TensorMetadata

__all__ = [
    "HEADER_LENGTH", "INPUT_IMAGE", "INPUT_TENSOR", "OUTPUT_LABELS", "OUTPUT_PROBS", "Decoded", "decode_request",
    "encode_response", "model_tensors",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_IMAGE, INPUT_TENSOR = "image", "input"
OUTPUT_PROBS, OUTPUT_LABELS = "probabilities", "labels"
DEFAULT_TOP_K = 5
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class Decoded:
    """An inference request, ready for :meth:`server.inference.Inference.infer`."""

    id: str | None
    images: list[bytes] | None
    tensor: Tensor | None
    top_k: int
    outputs: dict[str, bool]  # output name -> answer it as raw bytes


def model_tensors(pre: Preprocess, num_classes: int) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
    """The inputs and outputs a task's model metadata publishes."""
    prep = {"layout": "NCHW", "size": pre.size, "channels": pre.channels, "mean": list(pre.mean),
            "std": list(pre.std), "scale": 1 / 255, "resize": "bilinear", "mode": "L" if pre.channels == 1 else "RGB",
            "formula": "x = (pixel / 255 - mean) / std after converting to mode and resizing to size x size; "
                       "a grey task's channel is repeated 3 times ([N, 1, size, size] is accepted too)"}
    inputs = [TensorMetadata(name=INPUT_IMAGE, datatype="BYTES", shape=[-1]),
              TensorMetadata(name=INPUT_TENSOR, datatype="FP32", shape=[-1, 3, pre.size, pre.size], parameters=prep)]
    outputs = [TensorMetadata(name=OUTPUT_PROBS, datatype="FP32", shape=[-1, num_classes]),
               TensorMetadata(name=OUTPUT_LABELS, datatype="BYTES", shape=[-1, -1])]
    return inputs, outputs


# -- requests ---------------------------------------------------------------------------------

def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.strip().isdecimal() or not 0 < int(header_length) <= len(body):
        raise BadTensor(f"{HEADER_LENGTH} is {header_length!r}; the body holds {len(body)} bytes")
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def _batch(inp: RequestInput, rank: tuple[int, ...], max_batch: int) -> int:
    if len(inp.shape) not in rank or any(d < 1 for d in inp.shape):
        raise BadTensor(f"input {inp.name!r} has shape {inp.shape}")
    if inp.shape[0] > max_batch:
        raise BadTensor(f"input {inp.name!r} holds {inp.shape[0]} samples; the limit is {max_batch}")
    return inp.shape[0]


def _flat(data: list[Any]) -> list[Any]:
    """Row-major elements of ``data``, nested or flat."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _bytes_elements(raw: memoryview) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BadTensor("a BYTES tensor ends inside an element's 4-byte length")
        (n,) = _LEN.unpack_from(raw, i)
        if i + 4 + n > len(raw):
            raise BadTensor("a BYTES element runs past the end of its tensor")
        out.append(bytes(raw[i + 4:i + 4 + n]))
        i += 4 + n
    return out


def _images(inp: RequestInput, raw: memoryview | None, max_batch: int) -> list[bytes]:
    if inp.datatype != "BYTES":
        raise BadTensor(f"input {INPUT_IMAGE!r} is BYTES (encoded images), not {inp.datatype}")
    n = _batch(inp, (1, 2), max_batch)
    if len(inp.shape) == 2 and inp.shape[1] != 1:
        raise BadTensor(f"input {INPUT_IMAGE!r} has shape {inp.shape}: one image per row, [N] or [N, 1]")
    if raw is not None:
        blobs = _bytes_elements(raw)
    else:
        try:
            blobs = [base64.b64decode(s, validate=True) for s in _flat(inp.data or [])]
        except (binascii.Error, TypeError, ValueError):
            raise BadTensor(f"input {INPUT_IMAGE!r} in JSON holds base64 strings, one per image") from None
    if len(blobs) != n:
        raise BadTensor(f"input {INPUT_IMAGE!r} has shape {inp.shape} but holds {len(blobs)} elements")
    return blobs


def _tensor(inp: RequestInput, raw: memoryview | None, max_batch: int) -> Tensor:
    if inp.datatype != "FP32":
        raise BadTensor(f"input {INPUT_TENSOR!r} is FP32, not {inp.datatype}")
    _batch(inp, (4,), max_batch)
    count = math.prod(inp.shape)
    try:
        if raw is not None:
            if len(raw) != 4 * count:
                raise BadTensor(f"input {INPUT_TENSOR!r} of shape {inp.shape} needs {4 * count} bytes, not {len(raw)}")
            arr = np.frombuffer(raw, dtype="<f4").reshape(inp.shape)
        else:
            arr = np.asarray(_flat(inp.data or []), dtype=np.float32)
            if arr.size != count:
                raise BadTensor(f"input {INPUT_TENSOR!r} has shape {inp.shape} but holds {arr.size} values")
            arr = arr.reshape(inp.shape)
    except (TypeError, ValueError) as e:
        raise BadTensor(f"input {INPUT_TENSOR!r} holds values that are not numbers: {e}") from None
    return torch.from_numpy(arr.astype(np.float32, copy=True))  # writable, native byte order


def _outputs(req: InferenceRequest) -> dict[str, bool]:
    binary = bool((req.parameters or {}).get("binary_data_output", False))
    if req.outputs is None:
        return {OUTPUT_PROBS: binary, OUTPUT_LABELS: binary}
    out = {}
    for o in req.outputs:
        if o.name not in (OUTPUT_PROBS, OUTPUT_LABELS):
            raise BadTensor(f"unknown output {o.name!r}: this model answers {OUTPUT_PROBS!r} and {OUTPUT_LABELS!r}")
        out[o.name] = bool((o.parameters or {}).get("binary_data", binary))
    return out


def _top_k(req: InferenceRequest) -> int:
    k = (req.parameters or {}).get("top_k", DEFAULT_TOP_K)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BadTensor(f"parameter top_k must be a positive integer, not {k!r}")
    return k


def decode_request(body: bytes, header_length: str | None, max_batch: int) -> Decoded:
    """Parse an inference request body (JSON, or JSON then binary tensors); BadTensor on anything amiss."""
    head, binary = _split(body, header_length)
    try:
        req = InferenceRequest.model_validate_json(head)
    except pydantic.ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()[:5])
        raise BadTensor(f"malformed inference request: {where}") from None
    if len(req.inputs) != 1:
        raise BadTensor(f"send exactly one input, {INPUT_IMAGE!r} (BYTES) or {INPUT_TENSOR!r} (FP32), "
                        f"not {len(req.inputs)}")
    inp = req.inputs[0]
    raw = None
    size = (inp.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
            raise BadTensor(f"binary_data_size is {size!r}; {len(binary)} bytes follow the JSON header")
        raw = binary
    elif len(binary) or inp.data is None:
        raise BadTensor(f"input {inp.name!r} has no data: send it as JSON 'data' or as binary data")
    if inp.name == INPUT_IMAGE:
        images, tensor = _images(inp, raw, max_batch), None
    elif inp.name == INPUT_TENSOR:
        images, tensor = None, _tensor(inp, raw, max_batch)
    else:
        raise BadTensor(f"unknown input {inp.name!r}: send {INPUT_IMAGE!r} (BYTES) or {INPUT_TENSOR!r} (FP32)")
    return Decoded(req.id, images, tensor, _top_k(req), _outputs(req))


# -- answers ----------------------------------------------------------------------------------

def encode_response(model_name: str, result: Inferred, req: Decoded) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers (``Inference-Header-Content-Length`` when raw tensors follow)."""
    probs = result.probs
    n, classes = probs.shape
    k = min(req.top_k, classes)
    top = probs.topk(k, dim=1).indices.tolist()
    names = [[result.labels[i] for i in row] for row in top]
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in req.outputs.items():
        if name == OUTPUT_PROBS:
            out: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": [n, classes]}
            if binary:
                chunks.append(probs.numpy().astype("<f4", copy=False).tobytes())
            else:
                out["data"] = probs.flatten().tolist()
        else:
            out = {"name": name, "datatype": "BYTES", "shape": [n, k]}
            if binary:
                encoded = [s.encode() for row in names for s in row]
                chunks.append(b"".join(_LEN.pack(len(b)) + b for b in encoded))
            else:
                out["data"] = [s for row in names for s in row]
        if binary:
            out["parameters"] = {"binary_data_size": len(chunks[-1])}
        outputs.append(out)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": str(result.version), "outputs": outputs,
                              "parameters": {"pack_version": result.pack_version}}
    if req.id is not None:
        answer["id"] = req.id
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(chunks), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
