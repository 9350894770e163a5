"""Each task's record as last read from the store on this replica, kept fresh by store events.

The pack cache resolves a miss to a stored version here (its keys name a task's current version, or
one pinned version: :func:`pinned_key`), and alias resolution (server.versions) reads a record's
aliases here.  One table per replica, fed by the pack cache's event callback.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import anyio.to_thread

from blockstore import AliasNotFound, Store, StoreEvent, TaskRecord

__all__ = ["RecordTable", "pinned_key", "split_key"]


def pinned_key(task_id: str, version: int) -> str:
    """The pack cache's key for one stored version of a task ('@' never occurs in a task id)."""
    return f"{task_id}@{int(version)}"


def split_key(key: str) -> tuple[str, int | None]:
    """``(task_id, version)`` of a cache key; version None for the task's current version."""
    task_id, _, version = key.partition("@")
    return task_id, int(version) if version else None


class RecordTable:
    """Per task, its record as last read from the store on this replica, and the store's corrupt marks,
    kept fresh by store events (:meth:`on_event`, fed by the pack cache, which drops the record before
    its entries).

    A record is read on first use and dropped on every store event of its task; ``resync`` drops them
    all.  The pack cache resolves a miss here (at 1,000 tasks a quarter of the requests missed, and the
    record read was one of the two Redis round trips on each miss's path), and alias resolution reads
    the record's aliases, so every replica follows an alias move as soon as the event reaches it.

    This is the same trust the pack cache already places in events for the tasks it holds: what it
    serves from memory is dropped when their event arrives, no sooner.  Bounded: the ``size`` most
    recently used records (a few hundred bytes each)."""

    def __init__(self, store: Store, size: int = 4096) -> None:
        self.store, self.size = store, size
        self._lock = threading.Lock()
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()
        # Reads in flight per task, and the tasks an event hit during one: those reads must not be
        # cached.  Both hold only tasks being read right now, so nothing grows with the ids ever seen.
        self._readers: dict[str, int] = {}
        self._raced: set[str] = set()
        self._epoch = 0  # bumped by a resync: every record read before it is stale
        self._corrupt: set[str] | None = None  # the store's marked digests (None: not read since a resync)
        self._marks = 0  # bumped by every corrupt, repair and resync event: a read of the marks raced one

    def _hit(self, task_id: str) -> TaskRecord | None:
        """Under the lock: the task's record if the table holds it, now the most recently used."""
        rec = self._records.get(task_id)
        if rec is not None:
            self._records.move_to_end(task_id)
        return rec

    def get(self, task_id: str) -> TaskRecord:
        """The task's record, from the table or read from the store (TaskNotFound, StoreUnavailable)."""
        with self._lock:
            rec = self._hit(task_id)
            if rec is not None:
                return rec
            epoch = self._epoch
            self._readers[task_id] = self._readers.get(task_id, 0) + 1
        rec = None
        try:
            rec = self.store.get_record(task_id)
        finally:
            with self._lock:
                fresh = task_id not in self._raced and epoch == self._epoch  # no event raced the read
                left = self._readers.pop(task_id) - 1
                if left:
                    self._readers[task_id] = left
                else:
                    self._raced.discard(task_id)
                if fresh and rec is not None:
                    self._records[task_id] = rec
                    while len(self._records) > self.size:
                        self._records.popitem(last=False)
        return rec

    def stored_version(self, key: str, *, fresh: bool = False) -> tuple[int, str]:
        """``(version, sha256)`` of the stored version a cache key names: the task's current one, or the
        pinned one (VersionNotFound, 404, names the versions kept).  ``fresh``: read the record from the
        store again first."""
        task_id, pinned = split_key(key)
        if fresh:
            self.forget(task_id)
        rec = self.get(task_id)
        if pinned is None:
            return rec.version, rec.sha256
        h = rec.find(pinned)
        return h.version, h.sha256

    def unmarked(self, sha256: str) -> bool:
        """Whether the store's corrupt marks, as events keep them here, leave ``sha256`` unmarked.  A
        digest that a current record names is stored (collection keeps what records name), so a copy of
        its bytes verified earlier (server.spill) may be used without asking the store again."""
        with self._lock:
            if self._corrupt is not None:
                return sha256 not in self._corrupt
            marks = self._marks
        corrupt = set(self.store.corrupt_digests())
        with self._lock:
            if marks == self._marks:  # no mark changed during the read
                self._corrupt = corrupt
        return sha256 not in corrupt

    async def resolve(self, task_id: str, alias: str) -> int:
        """The version ``alias`` points at; AliasNotFound (404) lists the task's aliases."""
        with self._lock:
            rec = self._hit(task_id)
        if rec is None:
            rec = await anyio.to_thread.run_sync(self.get, task_id)
        try:
            return rec.aliases[alias]
        except KeyError:
            raise AliasNotFound(f"task {task_id!r} has no alias {alias!r} (has {sorted(rec.aliases)})") from None

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._records.pop(task_id, None)
            if task_id in self._readers:
                self._raced.add(task_id)

    def on_event(self, ev: StoreEvent) -> None:
        """A store event: any change to a task may have changed its record (its version, its history,
        its aliases); a corrupt or repair event changes one digest's mark."""
        with self._lock:
            if ev.kind == "resync":
                self._epoch += 1
                self._records.clear()
            if ev.kind in ("corrupt", "repair", "resync"):
                self._marks += 1
                if ev.kind == "resync" or ev.sha256 is None:
                    self._corrupt = None
                elif self._corrupt is not None and ev.kind == "corrupt":
                    self._corrupt.add(ev.sha256)
                elif self._corrupt is not None:
                    self._corrupt.discard(ev.sha256)
                return
        self.forget(ev.task_id)
