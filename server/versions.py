"""Which stored version answers a request: the task's current one, a pinned version, or an alias's.

A request names at most one of ``version`` and ``alias`` (a :class:`Pin`).  A stored version never
changes while its task exists, so a pinned version is cached under its own key (``task@3``) beside
the current entry and the two never evict or confuse each other.  An alias is resolved through this
replica's :class:`AliasTable`: read from the task record on first use, dropped on every store event of
the task, so every replica follows an alias move as soon as the event reaches it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import anyio.to_thread

from blockstore import AliasNotFound, Store, StoreEvent, validate_alias

from .cache import Lease, PackCache, pinned_key
from .errors import RequestError

__all__ = ["CURRENT", "AliasTable", "ConflictingPin", "Pin", "acquire"]


class ConflictingPin(RequestError):
    code = "validation_error"


@dataclass(frozen=True)
class Pin:
    """``version``: a store version (1, 2, ...); ``alias``: a named pointer to one; neither: the current."""

    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.alias is not None:
            raise ConflictingPin("name a version or an alias, not both")
        if self.version is not None and (isinstance(self.version, bool) or int(self.version) < 1):
            raise ConflictingPin(f"version must be a positive integer, not {self.version!r}")
        if self.alias is not None:
            validate_alias(self.alias)

    @classmethod
    def parse(cls, version_or_alias: str) -> Pin:
        """The Open Inference Protocol's ``/versions/{v}`` segment: digits are a version, else an alias."""
        if version_or_alias.isdecimal():
            return cls(version=int(version_or_alias))
        return cls(alias=version_or_alias)

    @property
    def is_current(self) -> bool:
        return self.version is None and self.alias is None


CURRENT = Pin()


class AliasTable:
    """Per task, the aliases of its record, as last read from the store on this replica."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, int]] = {}
        # Reads in flight per task, and the tasks an event hit during one: those reads must not be
        # cached.  Both hold only tasks being read right now, so nothing grows with the ids ever seen.
        self._readers: dict[str, int] = {}
        self._raced: set[str] = set()
        self._epoch = 0  # bumped by a resync: every table read before it is stale

    async def resolve(self, task_id: str, alias: str) -> int:
        """The version ``alias`` points at; AliasNotFound (404) lists the task's aliases."""
        with self._lock:
            table = self._tables.get(task_id)
            if table is None:
                epoch = self._epoch
                self._readers[task_id] = self._readers.get(task_id, 0) + 1
        if table is None:
            try:
                rec = await anyio.to_thread.run_sync(self.store.get_record, task_id)
                table = dict(rec.aliases)
            finally:
                with self._lock:
                    fresh = task_id not in self._raced and epoch == self._epoch  # no event raced the read
                    left = self._readers.pop(task_id) - 1
                    if left:
                        self._readers[task_id] = left
                    else:
                        self._raced.discard(task_id)
                    if fresh and table is not None:
                        self._tables[task_id] = table
        try:
            return table[alias]
        except KeyError:
            raise AliasNotFound(f"task {task_id!r} has no alias {alias!r} (has {sorted(table)})") from None

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._tables.pop(task_id, None)
            if task_id in self._readers:
                self._raced.add(task_id)

    def on_event(self, ev: StoreEvent) -> None:
        """Store subscription callback: any change to a task may have moved or removed its aliases."""
        if ev.kind == "resync":
            with self._lock:
                self._epoch += 1
                self._tables.clear()
        else:
            self.forget(ev.task_id)


async def acquire(cache: PackCache, aliases: AliasTable, task_id: str, pin: Pin) -> Lease:
    """A lease on the version ``pin`` names; the current entry serves it when it is that version."""
    version = pin.version
    if pin.alias is not None:
        version = await aliases.resolve(task_id, pin.alias)
    if version is None:
        return await cache.acquire(task_id)
    cur = cache.cached_version(task_id)
    if cur is not None and cur[0] == version:
        lease = cache.try_lease(task_id)
        if lease is not None and lease.task.version == version:
            return lease
        if lease is not None:
            lease.release()
    return await cache.acquire(pinned_key(task_id, version))
