"""DirStore: the embedded default, a directory on one machine, safe across processes.

Layout::

    root/backbones/<id>.safetensors   backbone bytes
    root/backbones/DEFAULT            id of the default backbone
    root/packs/<sha256>.pack          immutable pack bytes
    root/tasks/<task_id>.json         TaskRecord (current pointer + history)
    root/events.log                   one JSON line per change, appended under the lock
    root/.lock                        flock serialising mutations

Every file is written to a temporary name and renamed into place; pack bytes are written before
the record that points at them, so a reader never sees a task that names missing bytes.
Subscribers tail ``events.log``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import PackNotFound, StoreUnavailable, TaskNotFound
from ..pack import PackInfo
from ..taskid import validate_task_id
from .base import Store, StoreEvent, Subscription, TaskRecord, next_record, rolled_back, sha256_hex

__all__ = ["DirStore"]

log = logging.getLogger(__name__)


class DirStore(Store):
    def __init__(self, root: str | os.PathLike[str], *, poll_interval: float = 0.5) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self.poll_interval = poll_interval
        self._mutex = threading.Lock()
        try:
            for sub in ("backbones", "packs", "tasks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"cannot use {self.root} as a store: {e}") from None

    # -- files -----------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise StoreUnavailable(f"cannot write {path}: {e}") from None

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnavailable(f"cannot read {path}: {e}") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            try:
                f = open(self.root / ".lock", "a+b")  # noqa: SIM115 - closed by the with below
            except OSError as e:
                raise StoreUnavailable(f"cannot lock {self.root}: {e}") from None
            with f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)

    def _task_path(self, task_id: str) -> Path:
        return self.root / "tasks" / f"{validate_task_id(task_id)}.json"

    # -- backbones -------------------------------------------------------------------------

    def put_backbone(self, data: bytes, *, make_default: bool = True) -> str:
        bid = sha256_hex(data)
        path = self.root / "backbones" / f"{bid}.safetensors"
        if not path.exists():
            self._write(path, data)
        if make_default:
            self._write(self.root / "backbones" / "DEFAULT", bid.encode())
        return bid

    def _get_backbone(self, backbone_id: str) -> bytes | None:
        if len(backbone_id) != 64 or not all(c in "0123456789abcdef" for c in backbone_id):
            return None
        return self._read(self.root / "backbones" / f"{backbone_id}.safetensors")

    def default_backbone_id(self) -> str | None:
        data = self._read(self.root / "backbones" / "DEFAULT")
        return data.decode().strip() if data else None

    # -- tasks -----------------------------------------------------------------------------

    def _load_record(self, task_id: str) -> TaskRecord | None:
        data = self._read(self._task_path(task_id))
        return TaskRecord.from_dict(json.loads(data)) if data else None

    def _save_record(self, rec: TaskRecord) -> None:
        self._write(self._task_path(rec.task_id), json.dumps(rec.to_dict(), sort_keys=True).encode())

    def _register(self, task_id: str, pack: bytes, info: PackInfo) -> tuple[TaskRecord, bool]:
        ppath = self.root / "packs" / f"{info.sha256}.pack"
        if not ppath.exists():
            self._write(ppath, pack)
        with self._locked():
            old = self._load_record(task_id)
            new = next_record(task_id, old, info)
            if new is None:
                assert old is not None
                return old, False
            self._save_record(new)
            self._log(StoreEvent("update" if old else "register", task_id, new.version, new.sha256))
            return new, True

    def get_record(self, task_id: str) -> TaskRecord:
        rec = self._load_record(task_id)
        if rec is None:
            raise TaskNotFound(f"task {task_id!r} is not registered")
        return rec

    def get_pack_bytes(self, sha256: str) -> bytes:
        data = None
        if len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256):
            data = self._read(self.root / "packs" / f"{sha256}.pack")
        if data is None:
            raise PackNotFound(f"store {self.url} holds no pack {sha256[:12]}...")
        return data

    def list_tasks(self) -> list[str]:
        try:
            return sorted(p.stem for p in (self.root / "tasks").glob("*.json"))
        except OSError as e:
            raise StoreUnavailable(f"cannot list {self.root}: {e}") from None

    def delete(self, task_id: str) -> None:
        path = self._task_path(task_id)
        with self._locked():
            try:
                path.unlink()
            except FileNotFoundError:
                raise TaskNotFound(f"task {task_id!r} is not registered") from None
            self._log(StoreEvent("delete", task_id))

    def rollback(self, task_id: str, version: int) -> TaskRecord:
        with self._locked():
            new = rolled_back(self.get_record(task_id), version)
            self._save_record(new)
            self._log(StoreEvent("rollback", task_id, new.version, new.sha256))
            return new

    def _change_record(self, task_id: str,
                       change: Callable[[TaskRecord], tuple[TaskRecord, StoreEvent] | None]) -> tuple[TaskRecord, bool]:
        with self._locked():
            old = self.get_record(task_id)
            done = change(old)
            if done is None:
                return old, False
            new, event = done
            self._save_record(new)
            self._log(event)
            return new, True

    def ping(self) -> None:
        if not os.access(self.root / "tasks", os.R_OK | os.W_OK | os.X_OK):
            raise StoreUnavailable(f"store directory {self.root} is not readable and writable")

    # -- events ----------------------------------------------------------------------------

    @property
    def _events_path(self) -> Path:
        return self.root / "events.log"

    def _log(self, ev: StoreEvent) -> None:
        """Append one event line; called under the lock, so lines never interleave."""
        try:
            with open(self._events_path, "ab") as f:
                f.write(json.dumps(ev.__dict__).encode() + b"\n")
        except OSError as e:
            log.warning("cannot append to %s: %s", self._events_path, e)

    def subscribe(self, callback: Callable[[StoreEvent], None]) -> Subscription:
        return _TailSubscription(self, callback)


class _TailSubscription(Subscription):
    """Tails ``events.log`` from its current end, every ``poll_interval`` seconds."""

    def __init__(self, store: DirStore, callback: Callable[[StoreEvent], None]) -> None:
        super().__init__(callback, "dirstore-events")
        self._store = store
        path = store._events_path
        self._offset = path.stat().st_size if path.exists() else 0
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._store.poll_interval):
            try:
                with open(self._store._events_path, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("cannot read store events: %s", e)
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
            self._offset += len(complete)
            for line in complete.splitlines():
                try:
                    ev = StoreEvent(**json.loads(line))
                except (ValueError, TypeError):
                    log.warning("ignoring malformed store event %r", line[:200])
                    continue
                self._deliver(ev)
