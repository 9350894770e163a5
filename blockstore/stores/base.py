"""The store interface shared by RedisStore and DirStore.

A store holds backbones (by id), immutable pack bytes (by SHA-256) and, per task, a record that
points at the current pack plus the history of every version, for rollback.  Versions are integers
that the store assigns (1, 2, ...); the pack's own ``version`` string is kept as ``pack_version``.
Aliases (``production``, ``canary``) are named pointers to versions in the history, kept in the same
record (so they change atomically with it) with a bounded log of every alias change.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from ..errors import AliasNotFound, BackboneNotFound, PackTaskMismatch, VersionNotFound
from ..pack import PackInfo, read_pack_info
from ..taskid import validate_alias, validate_task_id

__all__ = [
    "ALIAS_EVENTS", "ALIAS_LOG_LIMIT", "AliasChange", "Store", "StoreEvent", "Subscription", "TaskRecord",
    "VersionRecord",
]

ALIAS_LOG_LIMIT = 100  # alias changes kept per task record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRecord:
    version: int
    sha256: str
    backbone_id: str
    pack_version: str
    registered_at: float


@dataclass(frozen=True)
class AliasChange:
    """One entry of a task's alias log: ``alias`` pointed at ``version`` (None: removed) from ``at``."""

    alias: str
    version: int | None
    at: float


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    version: int
    sha256: str
    backbone_id: str
    updated_at: float
    history: tuple[VersionRecord, ...] = field(default_factory=tuple)
    aliases: dict[str, int] = field(default_factory=dict, hash=False)  # alias -> version in history
    alias_log: tuple[AliasChange, ...] = field(default_factory=tuple)  # the last ALIAS_LOG_LIMIT changes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["history"] = [asdict(h) for h in self.history]
        d["alias_log"] = [asdict(c) for c in self.alias_log]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskRecord:
        hist = tuple(VersionRecord(**h) for h in d["history"])
        return cls(d["task_id"], int(d["version"]), d["sha256"], d["backbone_id"], float(d["updated_at"]), hist,
                   *alias_fields(d))

    def find(self, version: int) -> VersionRecord:
        for h in self.history:
            if h.version == version:
                return h
        have = [h.version for h in self.history]
        raise VersionNotFound(f"task {self.task_id!r} has no version {version} (has {have})")


def alias_fields(d: dict) -> tuple[dict[str, int], tuple[AliasChange, ...]]:
    """``aliases`` and ``alias_log`` from a serialised record; records written before aliases have none."""
    aliases = {str(k): int(v) for k, v in (d.get("aliases") or {}).items()}
    return aliases, tuple(AliasChange(**c) for c in d.get("alias_log") or ())


@dataclass(frozen=True)
class StoreEvent:
    kind: str  # "register" | "update" | "rollback" | "delete" | "alias" | "unalias" (| "resync", local)
    task_id: str
    version: int | None = None
    sha256: str | None = None
    alias: str | None = None  # the alias an "alias" or "unalias" event names


ALIAS_EVENTS = ("alias", "unalias")  # they move a pointer: no pack changes


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
    if old is None:
        return TaskRecord(task_id, version, info.sha256, info.backbone_id, now, (entry,))
    # replace() keeps the record's other fields (aliases, their log) as they were
    return replace(old, version=version, sha256=info.sha256, backbone_id=info.backbone_id, updated_at=now,
                   history=(*old.history, entry))


def rolled_back(old: TaskRecord, version: int) -> TaskRecord:
    h = old.find(version)
    return replace(old, version=h.version, sha256=h.sha256, backbone_id=h.backbone_id, updated_at=time.time())


def with_alias(old: TaskRecord, alias: str, version: int) -> TaskRecord | None:
    """The record with ``alias`` pointing at ``version`` (which must be in the history); None when it
    already does (idempotent, like registering the current bytes again)."""
    old.find(version)
    if old.aliases.get(alias) == version:
        return None
    return replace(old, aliases={**old.aliases, alias: version}, alias_log=_logged(old, alias, version))


def without_alias(old: TaskRecord, alias: str) -> TaskRecord:
    if alias not in old.aliases:
        raise AliasNotFound(f"task {old.task_id!r} has no alias {alias!r} (has {sorted(old.aliases)})")
    aliases = {k: v for k, v in old.aliases.items() if k != alias}
    return replace(old, aliases=aliases, alias_log=_logged(old, alias, None))


def _logged(old: TaskRecord, alias: str, version: int | None) -> tuple[AliasChange, ...]:
    return (*old.alias_log, AliasChange(alias, version, time.time()))[-ALIAS_LOG_LIMIT:]


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

    def get_backbone(self, backbone_id: str | None = None) -> bytes:
        """Backbone bytes by id, or the default backbone's when ``backbone_id`` is None."""
        bid = backbone_id or self.default_backbone_id()
        if bid is None:
            raise BackboneNotFound(f"store {self.url} holds no default backbone: run 'nettailor pretrain' first")
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

    def set_alias(self, task_id: str, alias: str, version: int) -> tuple[TaskRecord, bool]:
        """Point ``alias`` at ``version`` of the task (VersionNotFound unless it is in the history).
        Returns the record and whether it changed; a change is logged and announced as an event."""
        validate_task_id(task_id)
        validate_alias(alias)

        def change(old: TaskRecord) -> tuple[TaskRecord, StoreEvent] | None:
            new = with_alias(old, alias, int(version))
            return None if new is None else (new, StoreEvent("alias", task_id, int(version), alias=alias))

        return self._change_record(task_id, change)

    def delete_alias(self, task_id: str, alias: str) -> TaskRecord:
        """Remove ``alias`` from the task (AliasNotFound when it has no such alias)."""
        validate_task_id(task_id)
        validate_alias(alias)
        rec, _ = self._change_record(
            task_id, lambda old: (without_alias(old, alias), StoreEvent("unalias", task_id, alias=alias)))
        return rec

    @abstractmethod
    def _change_record(self, task_id: str,
                       change: Callable[[TaskRecord], tuple[TaskRecord, StoreEvent] | None]) -> tuple[TaskRecord, bool]:
        """Apply ``change`` to an existing task's record atomically and publish its event; ``change``
        returns None to leave the record as it is.  Raises TaskNotFound for an unknown task."""

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
