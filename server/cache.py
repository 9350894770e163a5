"""The pack cache: task id -> ready-to-run task tensors on the device.

* **Bounded in bytes**: over :attr:`PreparedTask.nbytes`, never a count of tasks; what a full cache
  pushes out, and whether it keeps a newcomer, is :class:`server.admission.Policy`'s choice.
* **Single flight**: concurrent misses on one task wait for one load (threads wait on an event;
  coroutines of one event loop share one future, so 50 requests do not park 50 threads).
* **Cold loads off the hot path**: a coroutine's miss runs in one of ``load_threads`` loader threads;
  with the executor in its own process (the CPU default), the load itself runs there
  (``prepare``, :meth:`server.engine.ProcessExecutor.load`) and the cache holds each task's
  description, without tensors.  :func:`server.loading.load_stored` is the one definition of a load.
* **Reference counts**: a request holds a :class:`Lease` while its sample runs.  Prepared tasks are
  never mutated; an update or delete only unlinks the entry, and an entry still leased is kept
  (and its bytes counted) until the last lease is released.
* **Invalidation**: store events drop a task's entry (``resync`` drops all).  A load that raced an
  event is not inserted, so an update is never hidden by a stale load.
* **Records**: a miss resolves the task to a stored version through a :class:`server.records.RecordTable`,
  which the same events keep fresh (each event drops the record before the entries, so a load that
  began after the event reads the new record).  A miss then costs no record read, and, when the
  table's corrupt marks leave the digest unmarked, a spilled copy is used without asking the store
  (server.spill); at 1,000 tasks this halved a miss's load, 9.8 and 8.5 ms against 4.1 and 3.7
  (bench/serve_bench.py, the README's findings).
* **Pinned versions**: ``server.records.pinned_key(task, version)`` names one stored version of a
  task (``task@3``) beside its current one, so a client that pins version 3 never evicts or confuses
  the current entry.  Any change to the task drops its pinned entries (retention may have pruned the version;
  the next request re-reads the record); alias events change no pack and drop nothing.
* **Failures**: a stored pack that cannot be prepared (corrupt, other backbone) makes its task answer
  ``task_unavailable`` for ``failure_ttl`` seconds or until the task's next store event, so a bad
  pack does not hammer the store.  A store outage leaves cached tasks serving, and spilled ones whose
  record the table holds.
* **Integrity**: the store verifies the SHA-256 of every pack it returns (a cold load hashes the bytes
  once, there).  A mismatch is logged, counted (``nettailor_integrity_failures_total``) and answered
  ``task_unavailable``; the store marks the digest corrupt and its ``corrupt`` event makes every
  replica drop the task, even one still holding a good copy, so all of them tell one story.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from blockstore import (
    ALIAS_EVENTS,
    Backbone,
    PackNotFound,
    Store,
    StoreEvent,
)

from .admission import Policy
from .errors import TaskUnavailable
from .executor import PreparedTask
from .loading import LoadFailure, Prepare, load_stored
from .metrics import Metrics
from .records import RecordTable, split_key

__all__ = ["Lease", "PackCache"]

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("live", "refs", "task")

    def __init__(self, task: PreparedTask) -> None:
        self.task, self.refs, self.live = task, 0, True


class Lease:
    """A reference to a prepared task; release it (or use ``with``) when the request is done."""

    __slots__ = ("_cache", "_entry")

    def __init__(self, cache: PackCache, entry: _Entry) -> None:
        self._cache, self._entry = cache, entry

    @property
    def task(self) -> PreparedTask:
        return self._entry.task

    def release(self) -> None:
        if self._entry is not None:
            self._cache._release(self._entry)
            self._entry = None  # type: ignore[assignment]

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.entry: _Entry | None = None
        self.error: BaseException | None = None


class PackCache:
    def __init__(self, store: Store, backbone: Backbone, capacity_bytes: int, metrics: Metrics | None = None, *,
                 failure_ttl: float = 5.0, prepare: Prepare | None = None, load_threads: int = 4,
                 policy: Policy | None = None, records: RecordTable | None = None) -> None:
        self.store, self.backbone, self.capacity = store, backbone, capacity_bytes
        self.metrics = metrics or Metrics()
        self.failure_ttl = failure_ttl
        self._prepare: Prepare = prepare or functools.partial(load_stored, store, backbone)
        # Cold loads of coroutines run here, a few at a time, not in anyio's 40 threads: at N = 1,000
        # tasks (bench/serve_bench.py), 40 loads at once in the server process fought the event loop for
        # the GIL and a 4 ms load took 270 ms.  With the loads in the executor process, 2 threads
        # served 104 req/s and 4 served 364 (8: 355): enough to keep that process busy.
        self._loader = ThreadPoolExecutor(load_threads, thread_name_prefix="nettailor-load")
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._retired: dict[int, _Entry] = {}  # unlinked but still leased, by id()
        self._live_bytes = 0
        self._flights: dict[str, _Flight] = {}
        self._gen: dict[str, int] = {}
        self._failures: dict[str, tuple[float, BaseException]] = {}
        self._pending: dict[str, asyncio.Future[_Entry]] = {}  # event-loop side of single flight
        self._policy = policy or Policy()
        self.records = records or RecordTable(store)
        self.loads = 0

    # -- public ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the cold-load threads (loads in flight finish; queued ones are cancelled)."""
        self._loader.shutdown(wait=False, cancel_futures=True)

    def lease(self, task_id: str) -> Lease:
        """Blocking: the task's prepared tensors, loading them (once, for all callers) on a miss."""
        lease = self.try_lease(task_id)
        if lease is not None:
            return lease
        return self._lease_entry(self._load(task_id))

    async def acquire(self, task_id: str) -> Lease:
        """Like :meth:`lease` for coroutines: hits never leave the event loop, and concurrent misses
        share one load running in a worker thread."""
        lease = self.try_lease(task_id)
        if lease is not None:
            return lease
        fut = self._pending.get(task_id)
        if fut is None:
            fut = asyncio.wrap_future(self._loader.submit(self._load, task_id))
            self._pending[task_id] = fut

            def forget(f: asyncio.Future[_Entry], tid: str = task_id) -> None:
                if self._pending.get(tid) is f:
                    del self._pending[tid]
                if not f.cancelled():
                    f.exception()  # retrieved: every waiter re-raises it

            fut.add_done_callback(forget)
        else:
            self.metrics.cache_misses.inc()
        entry = await asyncio.shield(fut)
        return self._lease_entry(entry)

    def try_lease(self, task_id: str) -> Lease | None:
        """A hit, or None on a miss; raises the remembered failure of a task with a bad pack."""
        with self._lock:
            self._policy.touch(task_id, len(self._entries))
            e = self._entries.get(task_id)
            if e is not None:
                self._entries.move_to_end(task_id)
                e.refs += 1
                self.metrics.cache_hits.inc()
                return Lease(self, e)
            failed = self._failures.get(task_id)
            if failed is not None:
                if failed[0] > time.monotonic():
                    raise failed[1]
                del self._failures[task_id]
        return None

    def _bump(self, task_id: str) -> None:
        """Under the lock: make any load of ``task_id`` in flight discard its result.  Generations only
        matter while loads are in flight, so with none the table is emptied (it would otherwise
        keep one entry per task id ever seen)."""
        if self._flights:
            self._gen[task_id] = self._gen.get(task_id, 0) + 1
        else:
            self._gen.clear()

    def invalidate(self, task_id: str, reason: str = "invalidated") -> None:
        """Drop the task's entry (and its record: the next miss reads it again).  A "corrupt" reason
        keeps a remembered load failure: the bytes are still bad, and re-reading them would only fail
        again (and count again)."""
        self.records.forget(split_key(task_id)[0])  # before the entry, so no new load reads the old record
        with self._lock:
            self._bump(task_id)
            if reason != "corrupt":
                self._failures.pop(task_id, None)
            e = self._entries.pop(task_id, None)
            if e is not None:
                self._unlink(e, reason)
            self._update_gauges()

    def invalidate_all(self) -> None:
        with self._lock:
            for tid in set(self._entries) | set(self._failures) | set(self._flights):
                self._bump(tid)
            self._failures.clear()
            while self._entries:
                _, e = self._entries.popitem(last=False)
                self._unlink(e, "invalidated")
            self._update_gauges()

    def invalidate_pinned(self, task_id: str, reason: str = "invalidated") -> None:
        """Drop the task's pinned-version entries (and forget their failures and loads in flight)."""
        prefix = f"{task_id}@"
        with self._lock:
            for key in {k for k in (*self._entries, *self._flights, *self._failures) if k.startswith(prefix)}:
                self._gen[key] = self._gen.get(key, 0) + 1
                self._failures.pop(key, None)
                e = self._entries.pop(key, None)
                if e is not None:
                    self._unlink(e, reason)
            self._update_gauges()

    def on_event(self, ev: StoreEvent) -> None:
        """Store subscription callback (runs on the store's event thread).  The record table hears the
        event first: a load that begins after the entry is dropped must not read the old record."""
        self.records.on_event(ev)
        if ev.kind == "resync":
            self.invalidate_all()
        elif ev.kind in ALIAS_EVENTS:
            return
        elif ev.kind in ("corrupt", "repair"):  # the bytes changed state, whatever the version says
            reason = "corrupt" if ev.kind == "corrupt" else "invalidated"
            with self._lock:  # current and pinned entries (task@3) alike
                hit = [key for key, e in self._entries.items() if e.task.sha256 == ev.sha256]
            for key in {*hit, ev.task_id} - {"*"}:
                self.invalidate(key, reason)
            if ev.task_id != "*":
                self.invalidate_pinned(ev.task_id, reason)
        else:
            self.invalidate_pinned(ev.task_id)
            cur = self.cached_version(ev.task_id)
            if cur is None or ev.sha256 is None or cur[1] != ev.sha256 or cur[0] != ev.version:
                self.invalidate(ev.task_id)

    def cached_version(self, task_id: str) -> tuple[int, str] | None:
        with self._lock:
            e = self._entries.get(task_id)
            return (e.task.version, e.task.sha256) if e is not None else None

    def cached_tasks(self) -> list[str]:
        """Cache keys, least recently used first: task ids, and ``task@version`` for pinned versions."""
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held on the device: cached entries plus unlinked ones still in use."""
        with self._lock:
            return self._live_bytes + sum(e.task.nbytes for e in self._retired.values())

    # -- loading ---------------------------------------------------------------------------

    def _load_from_store(self, key: str) -> PreparedTask:
        """Resolve ``key`` to one stored version (:meth:`RecordTable.stored_version`), then fetch, verify
        and fold it with ``prepare`` (here, or in the executor process).  A pack collected meanwhile (the
        task changed, and its event is on the way) is resolved once more, from the store."""
        task_id = split_key(key)[0]
        for attempt in (1, 2):
            version, sha256 = self.records.stored_version(key, fresh=attempt == 2)
            try:
                return self._prepare(task_id, version, sha256, self.records.unmarked(sha256))
            except LoadFailure as e:
                if e.gone:
                    if attempt == 1:
                        continue
                    raise PackNotFound(e.detail) from None
                self.metrics.pack_failures.labels(e.code).inc()
                if e.integrity:
                    self.metrics.integrity_failures.labels("pack").inc()
                    log.error("%s", e.detail)
                raise TaskUnavailable(e.detail) from None
        raise AssertionError("unreachable")

    def _load(self, task_id: str) -> _Entry:
        """Single flight: the first caller loads, the others wait for its result."""
        with self._lock:
            e = self._entries.get(task_id)
            if e is not None:
                self._entries.move_to_end(task_id)
                return e
            flight = self._flights.get(task_id)
            leader = flight is None
            if leader:
                flight = self._flights[task_id] = _Flight()
                gen = self._gen.get(task_id, 0)
                self.metrics.cache_misses.inc()
        assert flight is not None
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.entry is not None
            return flight.entry
        t0 = time.perf_counter()
        try:
            task = self._load_from_store(task_id)
        except BaseException as e:
            with self._lock:
                if isinstance(e, TaskUnavailable) and self._gen.get(task_id, 0) == gen:
                    self._failures[task_id] = (time.monotonic() + self.failure_ttl, e)
                flight.error = e
                del self._flights[task_id]
                if not self._flights:
                    self._gen.clear()
            flight.done.set()
            raise
        self.metrics.pack_load.labels("spill" if task.spilled else "store").observe(time.perf_counter() - t0)
        entry = _Entry(task)
        with self._lock:
            self.loads += 1
            if self._gen.get(task_id, 0) == gen:  # no store event raced the load
                self._entries[task_id] = entry
                self._live_bytes += task.nbytes
                self._evict(task_id, entry)
            else:
                entry.live = False
            flight.entry = entry
            del self._flights[task_id]
            if not self._flights:
                self._gen.clear()
            self._update_gauges()
        flight.done.set()
        return entry

    # -- bookkeeping (under the lock) -------------------------------------------------------

    def _lease_entry(self, entry: _Entry) -> Lease:
        with self._lock:
            entry.refs += 1
            if not entry.live:
                self._retired[id(entry)] = entry
        return Lease(self, entry)

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.refs -= 1
            if entry.refs <= 0 and not entry.live:
                self._retired.pop(id(entry), None)
                self._update_gauges()

    def _unlink(self, e: _Entry, reason: str) -> None:
        e.live = False
        self._live_bytes -= e.task.nbytes
        self.metrics.cache_evictions.labels(reason).inc()
        if e.refs > 0:
            self._retired[id(e)] = e

    def _evict(self, key: str, new: _Entry) -> None:
        """Make room for ``new`` (just inserted under ``key``) until the budget holds, pushing out the
        entries that :class:`server.admission.Policy` picks; a newcomer colder than the first of them
        is served to its callers but not kept, nor is an entry over the whole budget."""
        first = True
        while self._live_bytes > self.capacity and self._entries:
            victim = self._policy.victim(((t, e.task.nbytes) for t, e in self._entries.items()), keep=key)
            if victim is None:  # ``new`` is all there is
                del self._entries[key]
                self._unlink(new, "capacity")
                return
            tid, nbytes = victim
            if first and self._policy.colder(key, new.task.nbytes, tid, nbytes):
                del self._entries[key]
                self._unlink(new, "admission")
                return
            first = False
            self._unlink(self._entries.pop(tid), "capacity")

    def _update_gauges(self) -> None:
        self.metrics.cache_entries.set(len(self._entries))
        self.metrics.cache_bytes.set(self._live_bytes + sum(e.task.nbytes for e in self._retired.values()))
