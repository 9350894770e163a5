"""Request and response bodies of the HTTP API (docs/http-api.md); the OpenAPI document is built from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "AliasChangeInfo", "AliasRequest", "Aliases",
    "BatchPrediction", "Health", "Label", "MultiPrediction", "Prediction", "Readiness", "Registered",
    "RollbackRequest", "TaskDetail", "TaskList", "TaskSummary", "Timings", "VersionInfo",
]


class Label(BaseModel):
    index: int = Field(description="class index in the task's classifier")
    label: str
    prob: float = Field(description="softmax probability")


class Timings(BaseModel):
    """Server-side milliseconds: reading and decoding the upload, waiting for the executor, running it, all."""

    decode: float
    queue: float
    infer: float
    total: float


class Prediction(BaseModel):
    task_id: str
    version: int = Field(description="the store's version of the task that answered")
    pack_version: str = Field(description="the pack's own version string")
    predictions: list[Label] = Field(description="top-k labels, most probable first")
    timings_ms: Timings


class BatchPrediction(BaseModel):
    task_id: str
    version: int
    pack_version: str
    results: list[list[Label]] = Field(description="top-k labels per image, in upload order")
    timings_ms: Timings


class MultiPrediction(BaseModel):
    results: dict[str, Prediction] = Field(description="one prediction per requested task")
    timings_ms: Timings


class TaskSummary(BaseModel):
    task_id: str
    status: Literal["ok", "unavailable"] = Field("ok", description="'unavailable': the task is registered but "
                                                "cannot be served (its stored pack or record is corrupt); every "
                                                "replica says so alike, and the pack fields are null")
    detail: str | None = Field(None, description="why an unavailable task cannot be served")
    version: int | None = None
    pack_version: str | None = None
    num_classes: int | None = None
    blocks_kept: int | None = Field(None, description="universal blocks the plan keeps")
    blocks_total: int | None = Field(None, description="universal blocks in the backbone")
    shared_params: int | None = Field(None, description="parameters of the kept universal blocks and stem "
                                      "(shared by all tasks)")
    task_params: int | None = Field(None, description="parameters the task owns: proxies, path weights, classifier")
    flops: int | None = Field(None, description="multiply-accumulates of one forward pass of the tailored network")
    backbone_flops: int | None = Field(None, description="the same for the full backbone with this classifier")
    accuracy: float | None = Field(None, description="test accuracy recorded in the pack (validation when absent)")


class VersionInfo(BaseModel):
    version: int
    sha256: str
    pack_version: str
    registered_at: float


class AliasChangeInfo(BaseModel):
    alias: str
    version: int | None = Field(description="the version the alias pointed at from then on; null: removed")
    at: float


class TaskDetail(TaskSummary):
    """Only a servable task has a detail; an unavailable one answers 503 task_unavailable."""

    version: int
    pack_version: str
    num_classes: int
    blocks_kept: int
    blocks_total: int
    shared_params: int
    task_params: int
    flops: int
    backbone_flops: int
    sha256: str
    backbone_id: str
    labels: list[str]
    preprocess: dict[str, Any]
    plan: dict[str, Any]
    metrics: dict[str, Any]
    history: list[VersionInfo]
    updated_at: float
    aliases: dict[str, int] = Field(default_factory=dict, description="alias -> store version")
    alias_log: list[AliasChangeInfo] = Field(default_factory=list, description="recent alias changes, oldest first")


class TaskList(BaseModel):
    tasks: list[TaskSummary]


class Registered(BaseModel):
    task_id: str
    version: int
    sha256: str
    changed: bool = Field(description="false when the call left the task as it was")


class RollbackRequest(BaseModel):
    version: int = Field(ge=1, description="an earlier version of the task (see TaskDetail.history)")


class AliasRequest(BaseModel):
    version: int = Field(ge=1, description="the store version the alias points at (see TaskDetail.history)")


class Aliases(BaseModel):
    task_id: str
    aliases: dict[str, int] = Field(description="alias -> store version, after the change")
    changed: bool = Field(description="false when the call left the task as it was")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "starting", "draining"]
    backbone_id: str | None = None
    store: Literal["ok", "unreachable", "unknown"] = "unknown"
    cached_tasks: int = 0
    queue_depth: int = 0
    detail: str | None = None
