"""A cold load: one stored version of a task, from its bytes in the store to a :class:`PreparedTask`.

:func:`load_stored` is the one definition, run by the pack cache (:mod:`server.cache`) in the server
process, or on the CPU in the executor process (:mod:`server.engine`), which keeps the tensors.  Its
failures are :class:`LoadFailure`: plain data, so they cross the executor process's pipe, and the
cache turns them into ``task_unavailable`` (and its metrics) in one place.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from blockstore import Backbone, BackboneMismatch, DigestMismatch, PackError, PackNotFound, Store, TaskPack

from .prepared import PreparedTask
from .spill import SpillTier

__all__ = ["LoadFailure", "Prepare", "load_stored"]

# (task id, version, sha256, trusted) -> the task, or LoadFailure; trusted: see load_stored
Prepare = Callable[[str, int, str, bool], PreparedTask]


class LoadFailure(Exception):
    """A stored version that cannot be served: ``detail`` says why.  ``integrity``: its bytes failed
    their digest; ``gone``: no bytes are stored under the digest (collected after a change)."""

    def __init__(self, detail: str, code: str, integrity: bool = False, gone: bool = False) -> None:
        super().__init__(detail, code, integrity, gone)  # args round-trip: it crosses the executor pipe
        self.detail, self.code, self.integrity, self.gone = detail, code, integrity, gone


class _Validated:
    """Packs that passed validation in this process against a backbone, the most recent ``size``.  A
    reload of such a pack skips validation: its bytes were just verified against the digest, so they
    are the very bytes that passed (validation was 0.35 of a 3.1 ms load).  Keys are 40 raw bytes (a
    backbone id prefix and the pack digest), about 170 bytes an entry."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._keys: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(backbone_id: str, sha256: str) -> bytes:
        return bytes.fromhex(backbone_id[:16] + sha256)

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key in self._keys

    def add(self, key: bytes) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)


_VALIDATED = _Validated()


def _refused(task_id: str, e: DigestMismatch | PackNotFound) -> LoadFailure:
    if isinstance(e, DigestMismatch):
        return LoadFailure(f"task {task_id!r} cannot be served: {e.detail}", e.code, integrity=True)
    return LoadFailure(e.detail, e.code, gone=True)


def load_stored(store: Store, backbone: Backbone, task_id: str, version: int, sha256: str, trusted: bool = False, *,
                uid: int | None = None, spill: SpillTier | None = None) -> PreparedTask:
    """The one definition of a cold load: fetch the bytes stored under ``sha256`` (verified by the
    store), parse, validate against ``backbone`` (once per digest and process) and fold.  Runs in the
    server process, or on the CPU in the executor process (server.engine).  Raises :class:`LoadFailure`.

    With a ``spill`` tier (server.spill), a task folded before is mapped from its file instead, once
    the store confirms that the digest is still stored and unmarked, or without asking when the caller
    vouches for that (``trusted``: the store's events, as a :class:`server.records.RecordTable` keeps
    them, say so); a task folded here is written there (by the tier's writer thread, after this returns)."""
    key = (backbone.backbone_id, sha256)
    if spill is not None and key in spill:
        try:
            if not trusted:
                store.check_pack(sha256)
        except (DigestMismatch, PackNotFound) as e:
            raise _refused(task_id, e) from None
        dev = next(backbone.parameters()).device
        task = spill.load(*key, version=version, uid=uid, device=dev)
        if task is not None:
            return task

    valid = _Validated.key(backbone.backbone_id, sha256)

    def prepare(data: bytes) -> PreparedTask:  # run while the store hashes the bytes beside it
        try:
            pack = TaskPack.from_bytes(data, backbone_id=backbone.backbone_id, verified_sha256=sha256)
            if pack.task_id != task_id:
                raise PackError(f"the stored pack names task {pack.task_id!r}")
            return PreparedTask.from_pack(pack, backbone, version=version, uid=uid, validated=valid in _VALIDATED)
        except Exception as e:  # whatever is wrong with the stored bytes, it stays this task's problem
            why = "was trained on another backbone" if isinstance(e, BackboneMismatch) else "is corrupt"
            code = e.code if isinstance(e, PackError) else type(e).__name__
            raise LoadFailure(f"task {task_id!r} cannot be served: its stored pack (version {version}) {why}: "
                              f"{getattr(e, 'detail', e)}", code) from None

    try:
        task = store.use_pack_bytes(sha256, task_id, prepare)
    except (DigestMismatch, PackNotFound) as e:
        raise _refused(task_id, e) from None
    _VALIDATED.add(valid)  # only bytes that hashed to their address
    if spill is not None:
        spill.save_later(backbone.backbone_id, task)  # written off this load's path
    return task
