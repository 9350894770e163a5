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

__all__ = ["LoadFailure", "Prepare", "load_stored"]

Prepare = Callable[[str, int, str], PreparedTask]  # (task id, version, sha256) -> the task, or LoadFailure


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


def load_stored(store: Store, backbone: Backbone, task_id: str, version: int, sha256: str, *,
                uid: int | None = None) -> PreparedTask:
    """The one definition of a cold load: fetch the bytes stored under ``sha256`` (verified by the
    store), parse, validate against ``backbone`` (once per digest and process) and fold.  Runs in the
    server process, or on the CPU in the executor process (server.engine).  Raises :class:`LoadFailure`."""
    try:
        data = store.get_pack_bytes(sha256, task_id)
    except DigestMismatch as e:
        raise LoadFailure(f"task {task_id!r} cannot be served: {e.detail}", e.code, integrity=True) from None
    except PackNotFound as e:
        raise LoadFailure(e.detail, e.code, gone=True) from None
    try:
        pack = TaskPack.from_bytes(data, backbone_id=backbone.backbone_id, verified_sha256=sha256)
        if pack.task_id != task_id:
            raise PackError(f"the stored pack names task {pack.task_id!r}")
        key = _Validated.key(backbone.backbone_id, sha256)
        task = PreparedTask.from_pack(pack, backbone, version=version, uid=uid, validated=key in _VALIDATED)
        _VALIDATED.add(key)
        return task
    except Exception as e:  # whatever is wrong with the stored bytes, it stays this task's problem
        why = "was trained on another backbone" if isinstance(e, BackboneMismatch) else "is corrupt"
        code = e.code if isinstance(e, PackError) else type(e).__name__
        raise LoadFailure(f"task {task_id!r} cannot be served: its stored pack (version {version}) {why}: "
                          f"{getattr(e, 'detail', e)}", code) from None
