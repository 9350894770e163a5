"""Bodies of the Open Inference Protocol (KServe v2 REST), as the protocol names their fields.

They document /v2 in the OpenAPI document and validate the JSON part of an inference request; the
tensors themselves are decoded by :mod:`server.protocol_v2`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "InferenceRequest", "InferenceResponse", "LiveResponse", "ModelMetadata", "RepositoryIndexRequest",
    "RepositoryModel", "RequestInput", "RequestOutput", "ResponseOutput", "ServerMetadata", "TensorMetadata",
    "V2Error", "V2Readiness",
]


class V2Error(BaseModel):
    """Every /v2 error answer, as the protocol shapes it."""

    error: str


class LiveResponse(BaseModel):
    live: bool


class V2Readiness(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BYTES, FP32, ...")
    shape: list[int] = Field(description="-1 marks a variable dimension (the batch)")
    parameters: dict[str, Any] | None = Field(None, description="for the FP32 input: the preprocessing it expects")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="the store versions the task retains")
    platform: str
    inputs: list[TensorMetadata] = Field(description="send exactly one of them")
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="version, pack_version, aliases, labels, top_k default")


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the tensor follows the JSON")
    data: list[Any] | None = Field(None, description="row-major values (nested or flat); BYTES elements base64")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: answer this output as raw bytes")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="top_k (default 5); binary_data_output")
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="list only the models loaded on this replica")


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY: loaded on this replica; UNAVAILABLE: loads on its first request")
    reason: str
