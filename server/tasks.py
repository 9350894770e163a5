"""Task management core: describe, register, delete and roll back tasks in the store.

Store calls block (Redis, files), so they run in worker threads.  A pack is fully validated
(parsed, checked against the loaded backbone, built) before the store sees it.

A registered task that cannot be served (its stored pack is marked corrupt in the store, does not
parse, or its record is malformed) is still listed, with ``status: unavailable`` and the reason, and
its detail answers 503 ``task_unavailable``.  The corruption marks live in the store, so every replica,
freshly started or long running, gives the same answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import anyio.to_thread

from blockstore import (
    AliasNotFound,
    Backbone,
    CorruptRecord,
    PackNotFound,
    PackTaskMismatch,
    Preprocess,
    Store,
    StoreUnavailable,
    TaskNotFound,
    TaskPack,
    TaskRecord,
    bn_buffers_per_block,
    validate_task_id,
)

from .cache import PackCache
from .errors import TaskUnavailable
from .schemas import AliasChangeInfo, Aliases, Registered, TaskDetail, TaskList, TaskSummary, VersionInfo
from .versions import Pin

__all__ = ["TaskManager", "VersionFacts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _PackFacts:
    """What a summary needs from a pack; keyed by its SHA-256, so it never goes stale."""

    task_id: str
    pack_version: str
    num_classes: int
    labels: list[str]
    preprocess: dict[str, Any]
    plan: dict[str, Any]
    metrics: dict[str, Any]
    cost: dict[str, int]


@dataclass(frozen=True)
class VersionFacts:
    """One stored version of a task, as the Open Inference Protocol's model metadata needs it."""

    task_id: str
    version: int
    pack_version: str
    versions: list[int]  # every version the task retains
    aliases: dict[str, int]
    labels: list[str]
    preprocess: Preprocess


def _accuracy(metrics: dict[str, Any]) -> float | None:
    for key in ("test_acc", "accuracy", "val_acc"):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


class TaskManager:
    def __init__(self, store: Store, backbone: Backbone, cache: PackCache) -> None:
        self.store, self.backbone, self.cache = store, backbone, cache
        self._bn = bn_buffers_per_block(backbone)
        self._facts: OrderedDict[str, _PackFacts] = OrderedDict()
        self._lock = threading.Lock()

    def forget(self, task_id: str, digests: set[str] | None = None) -> None:
        """Drop what this replica remembers of a deleted task (its facts by digest)."""
        with self._lock:
            for sha in digests if digests is not None else [k for k, f in self._facts.items() if f.task_id == task_id]:
                self._facts.pop(sha, None)

    # -- reading --------------------------------------------------------------------------

    def _pack_facts(self, rec: TaskRecord, corrupt: dict[str, str] | None = None) -> _PackFacts:
        """The pack's facts; TaskUnavailable when its bytes are marked corrupt (``corrupt``: the store's
        marks, read once per listing) or cannot be read as a pack."""
        why = (corrupt if corrupt is not None else self.store.corrupt_digests()).get(rec.sha256)
        if why is not None:
            raise TaskUnavailable(f"task {rec.task_id!r}: its stored pack (version {rec.version}) is corrupt: {why}")
        with self._lock:
            facts = self._facts.get(rec.sha256)
        if facts is not None:
            return facts
        try:
            data = self.store.get_pack_bytes(rec.sha256, rec.task_id)  # verified (and marked if bad)
            pack = TaskPack.from_bytes(data, verified_sha256=rec.sha256)
            cost = pack.plan.cost(self.backbone.spec, len(pack.labels), self._bn).as_dict()
        except (StoreUnavailable, TaskNotFound):
            raise
        except Exception as e:
            raise TaskUnavailable(f"task {rec.task_id!r}: its stored pack (version {rec.version}) is corrupt: "
                                  f"{getattr(e, 'detail', e)}") from None
        facts = _PackFacts(rec.task_id, pack.version, len(pack.labels), list(pack.labels), asdict(pack.preprocess),
                           pack.plan.to_dict(), dict(pack.metrics), cost)
        with self._lock:
            self._facts[rec.sha256] = facts
            while len(self._facts) > 4096:
                self._facts.popitem(last=False)
        return facts

    @staticmethod
    def _summary(rec: TaskRecord, f: _PackFacts) -> dict[str, Any]:
        c = f.cost
        return {"task_id": rec.task_id, "version": rec.version, "pack_version": f.pack_version,
                "num_classes": f.num_classes, "accuracy": _accuracy(f.metrics),
                **{k: c[k] for k in ("blocks_kept", "blocks_total", "shared_params", "task_params", "flops",
                                     "backbone_flops")}}

    def _list(self) -> TaskList:
        out = []
        corrupt = self.store.corrupt_digests()
        for tid in self.store.list_tasks():
            rec = None
            try:
                rec = self.store.get_record(tid)
                out.append(TaskSummary(**self._summary(rec, self._pack_facts(rec, corrupt))))
            except TaskNotFound:  # deleted between the two reads: not a task any more
                continue
            except (TaskUnavailable, CorruptRecord, PackNotFound) as e:  # listed and marked, on every replica
                out.append(TaskSummary(task_id=tid, status="unavailable", detail=e.detail,
                                       version=rec.version if rec is not None else None))
        return TaskList(tasks=out)

    def _detail(self, task_id: str) -> TaskDetail:
        validate_task_id(task_id)
        try:
            rec = self.store.get_record(task_id)
            f = self._pack_facts(rec)
        except (CorruptRecord, PackNotFound) as e:
            raise TaskUnavailable(f"task {task_id!r} cannot be served: {e.detail}") from None
        return TaskDetail(
            **self._summary(rec, f), sha256=rec.sha256, backbone_id=rec.backbone_id, labels=f.labels,
            preprocess=f.preprocess, plan=f.plan, metrics=f.metrics, updated_at=rec.updated_at,
            history=[VersionInfo(version=h.version, sha256=h.sha256, pack_version=h.pack_version,
                                 registered_at=h.registered_at) for h in rec.history],
            aliases=dict(rec.aliases),
            alias_log=[AliasChangeInfo(alias=c.alias, version=c.version, at=c.at) for c in rec.alias_log],
        )

    def _version_facts(self, task_id: str, pin: Pin) -> VersionFacts:
        validate_task_id(task_id)
        rec = self.store.get_record(task_id)
        version = rec.version if pin.version is None else pin.version
        if pin.alias is not None:
            if pin.alias not in rec.aliases:
                raise AliasNotFound(f"task {task_id!r} has no alias {pin.alias!r} (has {sorted(rec.aliases)})")
            version = rec.aliases[pin.alias]
        h = rec.find(version)
        f = self._pack_facts(dataclasses.replace(rec, version=h.version, sha256=h.sha256))
        return VersionFacts(task_id, h.version, f.pack_version, [x.version for x in rec.history], dict(rec.aliases),
                            f.labels, Preprocess(**f.preprocess))

    def _index(self) -> list[tuple[str, int]]:
        out = []
        for tid in self.store.list_tasks():
            try:
                out.append((tid, self.store.get_record(tid).version))
            except StoreUnavailable:
                raise
            except Exception as e:  # a task deleted meanwhile, a record another tool damaged
                log.warning("the repository index skips %s: %s", tid, getattr(e, "detail", e))
        return out

    async def version_facts(self, task_id: str, pin: Pin) -> VersionFacts:
        """The stored version ``pin`` names (the current one by default): NotFound, TaskUnavailable."""
        return await anyio.to_thread.run_sync(self._version_facts, task_id, pin)

    async def index(self) -> list[tuple[str, int]]:
        """Every task and its current version."""
        return await anyio.to_thread.run_sync(self._index)

    async def list(self) -> TaskList:
        return await anyio.to_thread.run_sync(self._list)

    async def detail(self, task_id: str) -> TaskDetail:
        return await anyio.to_thread.run_sync(self._detail, task_id)

    # -- changing -------------------------------------------------------------------------

    def _register(self, task_id: str, data: bytes) -> tuple[Registered, bool]:
        validate_task_id(task_id)
        pack = TaskPack.from_bytes(data, backbone_id=self.backbone.backbone_id)  # 409 for another backbone
        if pack.task_id != task_id:
            raise PackTaskMismatch(f"the pack was built for task {pack.task_id!r}, not {task_id!r}")
        pack.validate(self.backbone)  # every tensor checked against the plan and the backbone
        rec, changed = self.store.register(task_id, data)
        # This replica at once (the others on the store event); also when unchanged, since the same
        # bytes repair a pack that was marked corrupt.  Retention may have pruned a pinned version.
        self.cache.invalidate(task_id)
        self.cache.invalidate_pinned(task_id)
        created = changed and len(rec.history) == 1
        return Registered(task_id=task_id, version=rec.version, sha256=rec.sha256, changed=changed), created

    def _delete(self, task_id: str) -> None:
        validate_task_id(task_id)
        self.store.delete(task_id)
        self.cache.invalidate(task_id)
        self.cache.invalidate_pinned(task_id)
        self.forget(task_id)

    def _rollback(self, task_id: str, version: int) -> Registered:
        validate_task_id(task_id)
        before = self.store.get_record(task_id)
        rec = self.store.rollback(task_id, version)
        changed = (before.version, before.sha256) != (rec.version, rec.sha256)
        if changed:
            self.cache.invalidate(task_id)
        return Registered(task_id=task_id, version=rec.version, sha256=rec.sha256, changed=changed)

    async def register(self, task_id: str, data: bytes) -> tuple[Registered, bool]:
        """Returns the record and whether the task is new."""
        return await anyio.to_thread.run_sync(self._register, task_id, data)

    async def delete(self, task_id: str) -> None:
        await anyio.to_thread.run_sync(self._delete, task_id)

    async def rollback(self, task_id: str, version: int) -> Registered:
        return await anyio.to_thread.run_sync(self._rollback, task_id, version)

    # -- aliases --------------------------------------------------------------------------

    def _set_alias(self, task_id: str, alias: str, version: int) -> Aliases:
        rec, changed = self.store.set_alias(task_id, alias, version)
        if changed:
            self.cache.records.forget(task_id)  # this replica at once; the others on the store event
        return Aliases(task_id=task_id, aliases=dict(rec.aliases), changed=changed)

    def _delete_alias(self, task_id: str, alias: str) -> None:
        self.store.delete_alias(task_id, alias)
        self.cache.records.forget(task_id)

    async def set_alias(self, task_id: str, alias: str, version: int) -> Aliases:
        return await anyio.to_thread.run_sync(self._set_alias, task_id, alias, version)

    async def delete_alias(self, task_id: str, alias: str) -> None:
        await anyio.to_thread.run_sync(self._delete_alias, task_id, alias)
