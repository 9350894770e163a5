"""The store interface shared by RedisStore and DirStore.

A store holds backbones (by id), immutable pack bytes (by SHA-256) and, per task, a record that
points at the current pack plus the history of its last versions, for rollback.  Versions are
integers that the store assigns (1, 2, ...); the pack's own ``version`` string is kept as
``pack_version``.  Aliases (``production``, ``canary``) are named pointers to versions in the history,
kept in the same record (so they change atomically with it) with a bounded log of every alias change.

Integrity: every read of stored bytes verifies them against their address, here and nowhere else
(:meth:`Store.get_pack_bytes`, :meth:`Store.use_pack_bytes`, :meth:`Store.get_backbone`).  A pack whose
bytes no longer hash to their digest is recorded as corrupt *in the store* and announced with a
``corrupt`` event, so every replica, the one that found it and those that still hold a good copy in
memory, refuses it alike until an operator registers a pack again (the same bytes repair it).

Lifecycle: each task keeps its last ``keep_versions`` versions (:mod:`.lifecycle`) plus every version
an alias points at (retention never drops an aliased version); bytes that no record names are
collected on delete and update, and by :meth:`Store.collect_garbage`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import (
    BackboneNotFound,
    CorruptBackbone,
    CorruptRecord,
    DigestMismatch,
    NetTailorError,
    PackNotFound,
    PackTaskMismatch,
)
from ..pack import PackInfo, read_pack_info
from ..taskid import validate_alias, validate_task_id
from .lifecycle import DEFAULT_KEEP_VERSIONS, GcReport
from .records import StoreEvent, TaskRecord, pruned, with_alias, without_alias

__all__ = ["GcReport", "Store", "Subscription"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class Store(ABC):
    """Backbones, content-addressed packs and task records; safe for concurrent processes."""

    url: str
    keep_versions: int = DEFAULT_KEEP_VERSIONS

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
        """Backbone bytes by id, or the default backbone's when ``backbone_id`` is None, verified:
        raise CorruptBackbone when they do not hash to their id."""
        bid = backbone_id or self.default_backbone_id()
        if bid is None:
            raise BackboneNotFound(f"store {self.url} holds no default backbone: run 'nettailor pretrain' or "
                                   "'nettailor backbone import SOURCE --default' first")
        data = self._get_backbone(bid)
        if data is None:
            raise BackboneNotFound(f"store {self.url} holds no backbone {bid[:12]}...")
        actual = sha256_hex(data)
        if actual != bid:
            log.error("store %s: backbone %s... failed its SHA-256 check (the bytes hash to %s...)",
                      self.url, bid[:12], actual[:12])
            raise CorruptBackbone(f"the stored backbone {bid[:12]}... is corrupt: its {len(data)} bytes hash to "
                                  f"{actual[:12]}...; store the backbone again ('nettailor pretrain' or put_backbone)")
        return data

    # tasks
    def register(self, task_id: str, pack: bytes) -> tuple[TaskRecord, bool]:
        """Make ``pack`` the task's current version.  Returns the record and whether it changed:
        registering the current bytes again is a no-op (except that it repairs them if they were
        marked corrupt)."""
        validate_task_id(task_id)
        info = read_pack_info(pack)
        if info.task_id != task_id:
            raise PackTaskMismatch(f"the pack was built for task {info.task_id!r}, not {task_id!r}")
        return self._register(task_id, pack, info)

    @abstractmethod
    def _register(self, task_id: str, pack: bytes, info: PackInfo) -> tuple[TaskRecord, bool]: ...

    @abstractmethod
    def get_record(self, task_id: str) -> TaskRecord:
        """Raise TaskNotFound when the task is not registered, CorruptRecord when its record is malformed."""

    def get_pack_bytes(self, sha256: str, task_id: str | None = None) -> bytes:
        """The pack stored under ``sha256``, verified.  Raise PackNotFound, or DigestMismatch when the
        digest is marked corrupt or the bytes do not hash to it (which marks it, on every replica)."""
        data = self._fetch_pack(sha256)
        self._check_digest(data, sha256, task_id, sha256_hex(data))
        return data

    def use_pack_bytes(self, sha256: str, task_id: str | None, use: Callable[[bytes], T]) -> T:
        """``use(bytes)`` of the pack stored under ``sha256``, run while another thread checks their digest
        (hashlib releases the GIL): a cold load parses and folds while the bytes are hashed, instead of
        after (SHA-256 of a 4.7 MB pack: 2.7 ms of an 11 ms cold switch on the 2-core machine).

        What ``use`` returns or raises counts only once the bytes hash to their address; else, whatever
        ``use`` did, DigestMismatch, exactly as :meth:`get_pack_bytes` (so ``use`` must keep nothing
        before it returns: its caller keeps the result)."""
        data = self._fetch_pack(sha256)
        digest = _hasher().submit(sha256_hex, data)
        try:
            return use(data)
        finally:  # a mismatch raises here, in place of use's result or error
            self._check_digest(data, sha256, task_id, digest.result())

    def _fetch_pack(self, sha256: str) -> bytes:
        data, corrupt = self._read_pack(sha256)
        if corrupt is not None:
            raise DigestMismatch(f"the stored pack {sha256[:12]}... is marked corrupt: {corrupt}", sha256)
        if data is None:
            raise PackNotFound(f"store {self.url} holds no pack {sha256[:12]}...")
        return data

    def _check_digest(self, data: bytes, sha256: str, task_id: str | None, actual: str) -> None:
        if actual == sha256:
            return
        detail = (f"its {len(data)} bytes hash to {actual[:12]}..., not to their address {sha256[:12]}...; "
                  f"register the pack again to repair it")
        log.error("store %s: pack %s... (task %s) failed its SHA-256 check: %s", self.url, sha256[:12],
                  task_id or "?", detail)
        try:
            self._mark_corrupt(sha256, detail, task_id or "*")
        except NetTailorError as e:  # the bytes are refused all the same
            log.warning("cannot record pack %s... as corrupt: %s", sha256[:12], e.detail)
        raise DigestMismatch(f"the stored pack {sha256[:12]}... is corrupt: {detail}", sha256)

    def check_pack(self, sha256: str) -> None:
        """Whether a copy of the bytes stored under ``sha256``, verified earlier, may still be used:
        without reading them, raise PackNotFound when none are stored (collected) and DigestMismatch
        when the digest is marked corrupt.  One round trip (server.spill asks it before each reuse)."""
        present, corrupt = self._pack_state(sha256)
        if corrupt is not None:
            raise DigestMismatch(f"the stored pack {sha256[:12]}... is marked corrupt: {corrupt}", sha256)
        if not present:
            raise PackNotFound(f"store {self.url} holds no pack {sha256[:12]}...")

    @abstractmethod
    def _pack_state(self, sha256: str) -> tuple[bool, str | None]:
        """Whether bytes are stored under ``sha256``, and its corruption mark (None: unmarked)."""

    @abstractmethod
    def _read_pack(self, sha256: str) -> tuple[bytes | None, str | None]:
        """The bytes stored under ``sha256`` (None: none) and its corruption mark (None: unmarked)."""

    @abstractmethod
    def _mark_corrupt(self, sha256: str, detail: str, task_id: str) -> None:
        """Record ``sha256`` as corrupt and announce it, unless its bytes were replaced meanwhile."""

    @abstractmethod
    def corrupt_digests(self) -> dict[str, str]:
        """Pack digests marked corrupt, with the reason."""

    def get_pack(self, task_id: str) -> tuple[TaskRecord, bytes]:
        """The task's record and its current pack bytes, verified."""
        rec = self.get_record(task_id)
        try:
            return rec, self.get_pack_bytes(rec.sha256, task_id)
        except PackNotFound:
            # The task changed or went between the two reads, and a collection took the old bytes.
            again = self.get_record(task_id)
            if again.sha256 == rec.sha256:
                raise
            return again, self.get_pack_bytes(again.sha256, task_id)

    @abstractmethod
    def list_tasks(self) -> list[str]: ...

    @abstractmethod
    def delete(self, task_id: str) -> None:
        """Remove the task and its history, then collect the pack bytes nothing else references."""

    @abstractmethod
    def rollback(self, task_id: str, version: int) -> TaskRecord: ...

    # lifecycle
    def collect_garbage(self, *, dry_run: bool = False) -> GcReport:
        """Apply the retention policy to every task, then delete the pack bytes no record names.

        With ``dry_run`` nothing changes; the report says what would go."""
        if dry_run:
            return self._gc_preview()
        pruned_count = 0
        for tid in self.list_tasks():
            try:
                pruned_count += self._prune(tid)
            except NetTailorError as e:  # a task deleted meanwhile, a malformed record: its bytes are kept
                log.warning("gc: leaving task %s as it is: %s", tid, e.detail)
        report = self._sweep(None, dry_run=False)
        return GcReport(False, report.tasks, pruned_count, report.packs_kept, report.packs_deleted,
                        report.bytes_freed, report.temp_files_removed)

    def _gc_preview(self) -> GcReport:
        keep: set[str] = set()
        tasks = pruned_count = 0
        for tid in self.list_tasks():
            tasks += 1
            try:
                rec = self.get_record(tid)
            except CorruptRecord:
                return self._sweep(None, dry_run=True)  # its raw record is only readable by the sweep
            except NetTailorError:
                continue
            after = pruned(rec, self.keep_versions) or rec
            pruned_count += len(rec.history) - len(after.history)
            keep |= after.referenced()
        sizes = self._pack_sizes()
        gone = tuple(sorted(d for d in sizes if d not in keep))
        return GcReport(True, tasks, pruned_count, len(sizes) - len(gone), gone, sum(sizes[d] for d in gone))

    @abstractmethod
    def _prune(self, task_id: str) -> int:
        """Cut the task's history to ``keep_versions`` atomically; return how many entries went."""

    @abstractmethod
    def _sweep(self, candidates: set[str] | None, *, dry_run: bool) -> GcReport:
        """Delete the bytes of ``candidates`` (None: of every stored pack) that no task record names,
        atomically with respect to registrations (see the store's module docstring)."""

    @abstractmethod
    def _pack_sizes(self) -> dict[str, int]:
        """Digest -> size of every stored pack."""

    def _collect_quietly(self, candidates: set[str] | None) -> None:
        """Collection after a delete or an update: a failure is logged, never raised, since the change
        it follows has been made (the next collection picks the bytes up)."""
        if candidates is not None and not candidates:
            return
        try:
            report = self._sweep(candidates, dry_run=False)
        except NetTailorError as e:
            log.warning("store %s: collecting unreferenced packs failed: %s", self.url, e.detail)
            return
        if report.packs_deleted:
            log.info("store %s: collected %d unreferenced pack(s), %d bytes", self.url, len(report.packs_deleted),
                     report.bytes_freed)

    def verify(self) -> dict[str, str]:
        """Re-hash every pack a task references and every backbone; returns digest -> problem for each
        one that fails (packs are marked corrupt as on any read)."""
        bad: dict[str, str] = {}
        for tid in self.list_tasks():
            try:
                digests = self.get_record(tid).referenced()
            except NetTailorError as e:
                bad[f"task:{tid}"] = e.detail
                continue
            for sha in sorted(digests):
                try:
                    self.get_pack_bytes(sha, tid)
                except NetTailorError as e:
                    bad[sha] = e.detail
        for bid in self.list_backbones():
            try:
                self.get_backbone(bid)
            except NetTailorError as e:
                bad[bid] = e.detail
        return bad

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


_HASHER: ThreadPoolExecutor | None = None
_HASHER_LOCK = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    """The threads that hash packs beside their use (Store.use_pack_bytes), made on first use."""
    global _HASHER
    with _HASHER_LOCK:
        if _HASHER is None:
            _HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nettailor-sha256")
        return _HASHER
