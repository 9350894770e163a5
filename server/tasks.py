"""Task management core: describe, register, delete and roll back tasks in the store.

Store calls block (Redis, files), so they run in worker threads.  A pack is fully validated
(parsed, checked against the loaded backbone, built) before the store sees it.

A registered task that cannot be served (its stored pack is marked corrupt in the store, does not
parse, or its record is malformed) is still listed, with ``status: unavailable`` and the reason, and
its detail answers 503 ``task_unavailable``.  The corruption marks live in the store, so every replica,
freshly started or long running, gives the same answer.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import anyio.to_thread

from blockstore import (
    Backbone,
    CorruptRecord,
    PackNotFound,
    PackTaskMismatch,
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
from .schemas import Registered, TaskDetail, TaskList, TaskSummary, VersionInfo

__all__ = ["TaskManager"]

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
        )

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
        # bytes repair a pack that was marked corrupt.
        self.cache.invalidate(task_id)
        created = changed and len(rec.history) == 1
        return Registered(task_id=task_id, version=rec.version, sha256=rec.sha256, changed=changed), created

    def _delete(self, task_id: str) -> None:
        validate_task_id(task_id)
        self.store.delete(task_id)
        self.cache.invalidate(task_id)
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
