"""Response models, mirroring the schemas of docs/http-api.md.

They allow extra fields, so an older client keeps working against a newer server that adds some.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AliasChange", "Aliases",
    "BatchPrediction", "HistoryEntry", "Label", "MultiPrediction", "Prediction", "Registered", "TaskDetail",
    "TaskSummary", "Timings",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Label(_Model):
    index: int
    label: str
    prob: float


class Timings(_Model):
    """Server-side milliseconds: image decoding, waiting in the queue, inference, and the whole request."""

    decode: float = 0.0
    queue: float = 0.0
    infer: float = 0.0
    total: float = 0.0


class Prediction(_Model):
    task_id: str
    version: int
    pack_version: str
    predictions: list[Label]
    timings_ms: Timings = Field(default_factory=Timings)

    @property
    def top(self) -> Label:
        """The most probable label."""
        return self.predictions[0]


class BatchPrediction(_Model):
    task_id: str
    version: int
    pack_version: str
    results: list[list[Label]]
    timings_ms: Timings = Field(default_factory=Timings)


class MultiPrediction(_Model):
    results: dict[str, Prediction]
    timings_ms: Timings = Field(default_factory=Timings)

    def __getitem__(self, task_id: str) -> Prediction:
        return self.results[task_id]


class TaskSummary(_Model):
    """A listed task.  ``status`` is "unavailable" for a registered task that cannot be served (its
    stored pack is corrupt): then ``detail`` says why and the pack fields are None."""

    task_id: str
    status: str = "ok"
    detail: str | None = None
    version: int | None = None
    pack_version: str | None = None
    num_classes: int | None = None
    blocks_kept: int | None = None
    blocks_total: int | None = None
    shared_params: int | None = None
    task_params: int | None = None
    flops: float | None = None
    backbone_flops: float | None = None
    accuracy: float | None = None


class HistoryEntry(_Model):
    version: int
    sha256: str
    pack_version: str
    registered_at: float | str


class AliasChange(_Model):
    alias: str
    version: int | None = None  # None: the alias was removed
    at: float


class TaskDetail(TaskSummary):
    version: int
    pack_version: str
    num_classes: int
    blocks_kept: int
    blocks_total: int
    shared_params: int
    task_params: int
    flops: float
    backbone_flops: float
    sha256: str
    backbone_id: str
    labels: list[str]
    preprocess: dict[str, Any] = Field(default_factory=dict)
    plan: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    history: list[HistoryEntry] = Field(default_factory=list)
    updated_at: float | str | None = None
    aliases: dict[str, int] = Field(default_factory=dict)
    alias_log: list[AliasChange] = Field(default_factory=list)


class Registered(_Model):
    task_id: str
    version: int
    sha256: str
    changed: bool


class Aliases(_Model):
    task_id: str
    aliases: dict[str, int]
    changed: bool
