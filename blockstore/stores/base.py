"""The store interface shared by RedisStore and DirStore.

A store holds backbones (by id), immutable pack bytes (by SHA-256) and, per task, a record that
points at the current pack plus the history of every version, for rollback.  Versions are integers
that the store assigns (1, 2, ...); the pack's own ``version`` string is kept as ``pack_version``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..errors import BackboneNotFound, PackTaskMismatch, VersionNotFound
from ..pack import PackInfo, read_pack_info
from ..taskid import validate_task_id

__all__ = ["Store", "StoreEvent", "Subscription", "TaskRecord", "VersionRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRecord:
    version: int
    sha256: str
    backbone_id: str
    pack_version: str
    registered_at: float


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    version: int
    sha256: str
    backbone_id: str
    updated_at: float
    history: tuple[VersionRecord, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["history"] = [asdict(h) for h in self.history]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskRecord:
        hist = tuple(VersionRecord(**h) for h in d["history"])
        return cls(d["task_id"], int(d["version"]), d["sha256"], d["backbone_id"], float(d["updated_at"]), hist)

    def find(self, version: int) -> VersionRecord:
        for h in self.history:
            if h.version == version:
                return h
        have = [h.version for h in self.history]
        raise VersionNotFound(f"task {self.task_id!r} has no version {version} (has {have})")


@dataclass(frozen=True)
class StoreEvent:
    kind: str  # "register" | "update" | "rollback" | "delete"
    task_id: str
    version: int | None = None
    sha256: str | None = None


class Subscription(ABC):
    """A daemon thread that delivers a store's change events to a callback until :meth:`close`.
    A failing callback is logged and never stops the stream."""

    def __init__(self, callback: Callable[[StoreEvent], None], name: str) -> None:
        self._cb = callback
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @abstractmethod
    def _run(self) -> None: ...

    def _deliver(self, ev: StoreEvent) -> None:
        try:
            self._cb(ev)
        except Exception:
            log.exception("store event callback failed for %s", ev)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def next_record(task_id: str, old: TaskRecord | None, info: PackInfo) -> TaskRecord | None:
    """The record after registering ``info``; None when it is already the current pack (idempotent)."""
    if old is not None and old.sha256 == info.sha256:
        return None
    now = time.time()
    version = 1 + max((h.version for h in old.history), default=0) if old else 1
    entry = VersionRecord(version, info.sha256, info.backbone_id, info.version, now)
    history = (old.history if old else ()) + (entry,)
    return TaskRecord(task_id, version, info.sha256, info.backbone_id, now, history)


def rolled_back(old: TaskRecord, version: int) -> TaskRecord:
    h = old.find(version)
    return TaskRecord(old.task_id, h.version, h.sha256, h.backbone_id, time.time(), old.history)


class Store(ABC):
    """Backbones, content-addressed packs and task records; safe for concurrent processes."""

    url: str

    # backbones
    @abstractmethod
    def put_backbone(self, data: bytes, *, make_default: bool = True) -> str: ...

    @abstractmethod
    def _get_backbone(self, backbone_id: str) -> bytes | None: ...

    @abstractmethod
    def default_backbone_id(self) -> str | None: ...

    @abstractmethod
    def list_backbones(self) -> list[str]:
        """The ids of every backbone the store holds, sorted."""

    def get_backbone(self, backbone_id: str | None = None) -> bytes:
        """Backbone bytes by id, or the default backbone's when ``backbone_id`` is None."""
        bid = backbone_id or self.default_backbone_id()
        if bid is None:
            raise BackboneNotFound(f"store {self.url} holds no default backbone: run 'nettailor pretrain' or "
                                   "'nettailor backbone import SOURCE --default' first")
        data = self._get_backbone(bid)
        if data is None:
            raise BackboneNotFound(f"store {self.url} holds no backbone {bid[:12]}...")
        return data

    # tasks
    def register(self, task_id: str, pack: bytes) -> tuple[TaskRecord, bool]:
        """Make ``pack`` the task's current version.  Returns the record and whether it changed:
        registering the current bytes again is a no-op."""
        validate_task_id(task_id)
        info = read_pack_info(pack)
        if info.task_id != task_id:
            raise PackTaskMismatch(f"the pack was built for task {info.task_id!r}, not {task_id!r}")
        return self._register(task_id, pack, info)

    @abstractmethod
    def _register(self, task_id: str, pack: bytes, info: PackInfo) -> tuple[TaskRecord, bool]: ...

    @abstractmethod
    def get_record(self, task_id: str) -> TaskRecord:
        """Raise TaskNotFound when the task is not registered."""

    @abstractmethod
    def get_pack_bytes(self, sha256: str) -> bytes:
        """Raise PackNotFound when the store holds no such pack."""

    def get_pack(self, task_id: str) -> tuple[TaskRecord, bytes]:
        rec = self.get_record(task_id)
        return rec, self.get_pack_bytes(rec.sha256)

    @abstractmethod
    def list_tasks(self) -> list[str]: ...

    @abstractmethod
    def delete(self, task_id: str) -> None:
        """Remove the task and its history.  Pack bytes stay (other tasks may share them)."""

    @abstractmethod
    def rollback(self, task_id: str, version: int) -> TaskRecord: ...

    @abstractmethod
    def subscribe(self, callback: Callable[[StoreEvent], None]) -> Subscription:
        """Call ``callback`` (from a background thread) for every change made by any process."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
