"""Task records and their transitions: the pure part of a store, with no I/O.

A record points a task at its current pack and keeps the history of its last versions (for rollback),
its aliases and their bounded log.  The functions below compute the record after a registration, a
rollback, a retention pass or an alias change; the stores apply them atomically.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from ..errors import AliasNotFound, CorruptRecord, VersionNotFound
from ..pack import PackInfo
from .lifecycle import DEFAULT_KEEP_VERSIONS, retained

__all__ = [
    "ALIAS_EVENTS", "ALIAS_LOG_LIMIT", "AliasChange", "StoreEvent", "TaskRecord", "VersionRecord", "alias_fields",
    "next_record", "pruned", "rolled_back", "with_alias", "without_alias",
]

ALIAS_LOG_LIMIT = 100  # alias changes kept per task record


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
        """Raise CorruptRecord for anything but the shape :meth:`to_dict` writes."""
        try:
            hist = tuple(VersionRecord(int(h["version"]), str(h["sha256"]), str(h["backbone_id"]),
                                       str(h["pack_version"]), float(h["registered_at"])) for h in d["history"])
            return cls(str(d["task_id"]), int(d["version"]), str(d["sha256"]), str(d["backbone_id"]),
                       float(d["updated_at"]), hist, *alias_fields(d))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            name = d.get("task_id", "?") if isinstance(d, dict) else "?"
            raise CorruptRecord(f"the stored record of task {name!r} is malformed ({type(e).__name__}: {e}); "
                                "delete the task to clear it") from None

    def referenced(self) -> frozenset[str]:
        """The pack digests this record keeps alive: the current pointer and every version in history
        (which holds every aliased version, see :func:`pinned_versions`)."""
        return frozenset({self.sha256, *(h.sha256 for h in self.history)})

    def pinned_versions(self) -> tuple[int, ...]:
        """Versions retention must keep whatever their age: the current one and every alias target."""
        return (self.version, *sorted(set(self.aliases.values())))

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
    # "register" | "update" | "rollback" | "delete"; "alias" | "unalias": an alias moved (no pack changes);
    # "corrupt": a pack failed its digest check (task_id may be "*"); "repair": a registration rewrote
    # bytes that were marked corrupt; "resync": events were lost (local).
    kind: str
    task_id: str
    version: int | None = None
    sha256: str | None = None
    alias: str | None = None  # the alias an "alias" or "unalias" event names


ALIAS_EVENTS = ("alias", "unalias")  # they move a pointer: no pack changes


def next_record(task_id: str, old: TaskRecord | None, info: PackInfo,
                keep: int = DEFAULT_KEEP_VERSIONS) -> TaskRecord | None:
    """The record after registering ``info``, its history cut to the last ``keep`` versions; None when
    ``info`` is already the current pack (idempotent)."""
    if old is not None and old.sha256 == info.sha256:
        return None
    now = time.time()
    version = 1 + max((h.version for h in old.history), default=0) if old else 1
    entry = VersionRecord(version, info.sha256, info.backbone_id, info.version, now)
    if old is None:
        return TaskRecord(task_id, version, info.sha256, info.backbone_id, now, (entry,))
    # Aliased versions are pinned like the new current one: retention never drops an alias's target.
    history = retained((*old.history, entry), keep, pinned=(version, *old.aliases.values()))
    # replace() keeps the record's other fields (aliases, their log) as they were
    return replace(old, version=version, sha256=info.sha256, backbone_id=info.backbone_id, updated_at=now,
                   history=history)


def pruned(old: TaskRecord, keep: int) -> TaskRecord | None:
    """``old`` with its history cut to the retention policy; None when nothing is dropped."""
    history = retained(old.history, keep, pinned=old.pinned_versions())
    if len(history) == len(old.history):
        return None
    return replace(old, history=history)  # aliases and their log stay


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
