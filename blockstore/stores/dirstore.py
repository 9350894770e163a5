"""DirStore: the embedded default, a directory on one machine, safe across processes.

Layout::

    root/backbones/<id>.safetensors   backbone bytes
    root/backbones/DEFAULT            id of the default backbone
    root/packs/<sha256>.pack          immutable pack bytes
    root/packs/<sha256>.corrupt       why those bytes failed their digest check (the corruption mark)
    root/tasks/<task_id>.json         TaskRecord (current pointer + history)
    root/events.log                   one JSON line per change, appended under the lock
    root/.lock                        flock serialising mutations

Every file is written to a temporary name and renamed into place (a failed write removes its
temporary file), so readers see whole files or none.  Subscribers tail ``events.log``.

**Collection never races a registration.**  Every change of a record and every collection holds
an exclusive ``flock`` on ``root/.lock``, so a collection's mark (reading every record) and its
sweep (deleting the pack files no record names) see no registration in between.  A registration
writes its pack bytes before taking the lock, to keep the lock short, and then, under the lock,
writes them again if a collection removed them meanwhile, before it saves the record that names
them.  So no record ever names missing bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..backbone import validate_backbone_bytes
from ..errors import CorruptRecord, StoreUnavailable, TaskNotFound
from ..pack import PackInfo
from ..taskid import validate_task_id
from .base import Store, Subscription, sha256_hex
from .lifecycle import DEFAULT_KEEP_VERSIONS, GcReport, digests_in
from .records import StoreEvent, TaskRecord, next_record, pruned, rolled_back

__all__ = ["DirStore"]

log = logging.getLogger(__name__)

_STALE_TEMP_S = 3600.0  # a temporary file this old belongs to a write that died (a kill, a crash)


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class DirStore(Store):
    def __init__(self, root: str | os.PathLike[str], *, poll_interval: float = 0.5,
                 keep_versions: int = DEFAULT_KEEP_VERSIONS) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
        self.root = Path(root)
        self.url = str(self.root)
        self.poll_interval = poll_interval
        self.keep_versions = keep_versions
        self._mutex = threading.Lock()
        try:
            for sub in ("backbones", "packs", "tasks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"cannot use {self.root} as a store: {e}") from None

    def __reduce__(self) -> tuple:
        """Pickled as how to open it again (the executor process reads packs from its own handle)."""
        reopen = functools.partial(DirStore, poll_interval=self.poll_interval, keep_versions=self.keep_versions)
        return reopen, (self.root,)

    # -- files -----------------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> None:
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if tmp is not None:  # never leave a half-written file behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if isinstance(e, OSError):
                raise StoreUnavailable(f"cannot write {path}: {e}") from None
            raise

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise CorruptRecord(f"{path} should be a file but is a directory") from None
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

    def _pack_path(self, sha256: str, suffix: str = ".pack") -> Path:
        return self.root / "packs" / f"{sha256}{suffix}"

    # -- backbones -------------------------------------------------------------------------

    def put_backbone(self, data: bytes, *, make_default: bool = True) -> str:
        validate_backbone_bytes(data)
        bid = sha256_hex(data)
        path = self.root / "backbones" / f"{bid}.safetensors"
        old = self._read(path)
        if old is None or sha256_hex(old) != bid:  # missing, or a rotten copy this call repairs
            self._write(path, data)
        if make_default:
            self._write(self.root / "backbones" / "DEFAULT", bid.encode())
        return bid

    def _get_backbone(self, backbone_id: str) -> bytes | None:
        if not _is_digest(backbone_id):
            return None
        return self._read(self.root / "backbones" / f"{backbone_id}.safetensors")

    def default_backbone_id(self) -> str | None:
        data = self._read(self.root / "backbones" / "DEFAULT")
        return data.decode().strip() if data else None

    def list_backbones(self) -> list[str]:
        try:
            return sorted(p.stem for p in (self.root / "backbones").glob("*.safetensors") if _is_digest(p.stem))
        except OSError as e:
            raise StoreUnavailable(f"cannot list {self.root}: {e}") from None

    # -- tasks -----------------------------------------------------------------------------

    def _load_record(self, task_id: str) -> TaskRecord | None:
        data = self._read(self._task_path(task_id))
        if not data:
            return None
        try:
            d = json.loads(data)
        except ValueError as e:
            raise CorruptRecord(f"the stored record of task {task_id!r} is not JSON ({e}); "
                                "delete the task to clear it") from None
        return TaskRecord.from_dict(d)

    def _save_record(self, rec: TaskRecord) -> None:
        self._write(self._task_path(rec.task_id), json.dumps(rec.to_dict(), sort_keys=True).encode())

    def _register(self, task_id: str, pack: bytes, info: PackInfo) -> tuple[TaskRecord, bool]:
        ppath, mark = self._pack_path(info.sha256), self._pack_path(info.sha256, ".corrupt")
        if not ppath.exists():
            self._write(ppath, pack)  # before the lock: a big write does not hold up other writers
        with self._locked():
            old = self._load_record(task_id)
            new = next_record(task_id, old, info, self.keep_versions)
            repaired = mark.exists()
            if repaired or not ppath.exists():  # marked corrupt, or collected since the write above
                self._write(ppath, pack)
                mark.unlink(missing_ok=True)
            if new is None:
                assert old is not None
                if repaired:
                    self._log(StoreEvent("repair", task_id, old.version, old.sha256))
                return old, False
            self._save_record(new)
            self._log(StoreEvent("update" if old else "register", task_id, new.version, new.sha256))
        if old is not None:
            self._collect_quietly(set(old.referenced() - new.referenced()))
        return new, True

    def get_record(self, task_id: str) -> TaskRecord:
        rec = self._load_record(task_id)
        if rec is None:
            raise TaskNotFound(f"task {task_id!r} is not registered")
        return rec

    def _pack_state(self, sha256: str) -> tuple[bool, str | None]:
        if not _is_digest(sha256):
            return False, None
        mark = self._read(self._pack_path(sha256, ".corrupt"))
        if mark is not None:
            return True, mark.decode(errors="replace")
        return self._pack_path(sha256).exists(), None

    def _read_pack(self, sha256: str) -> tuple[bytes | None, str | None]:
        if not _is_digest(sha256):
            return None, None
        mark = self._read(self._pack_path(sha256, ".corrupt"))
        if mark is not None:
            return None, mark.decode(errors="replace")
        return self._read(self._pack_path(sha256)), None

    def _mark_corrupt(self, sha256: str, detail: str, task_id: str) -> None:
        with self._locked():
            data = self._read(self._pack_path(sha256))
            if data is None or sha256_hex(data) == sha256:
                return  # collected or repaired since the failed read
            self._write(self._pack_path(sha256, ".corrupt"), detail.encode())
            self._log(StoreEvent("corrupt", task_id, None, sha256))

    def corrupt_digests(self) -> dict[str, str]:
        out = {}
        for p in (self.root / "packs").glob("*.corrupt"):
            data = self._read(p)
            if data is not None and _is_digest(p.stem):
                out[p.stem] = data.decode(errors="replace")
        return out

    def list_tasks(self) -> list[str]:
        try:
            return sorted(p.stem for p in (self.root / "tasks").glob("*.json"))
        except OSError as e:
            raise StoreUnavailable(f"cannot list {self.root}: {e}") from None

    def delete(self, task_id: str) -> None:
        path = self._task_path(task_id)
        with self._locked():
            raw = self._read(path)
            if raw is None:
                raise TaskNotFound(f"task {task_id!r} is not registered")
            try:
                path.unlink()
            except OSError as e:
                raise StoreUnavailable(f"cannot delete {path}: {e}") from None
            self._log(StoreEvent("delete", task_id))
        self._collect_quietly(digests_in(raw))  # read raw: a malformed record still names its packs

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

    # -- lifecycle -------------------------------------------------------------------------

    def _prune(self, task_id: str) -> int:
        with self._locked():
            old = self.get_record(task_id)
            new = pruned(old, self.keep_versions)
            if new is None:
                return 0
            self._save_record(new)
            return len(old.history) - len(new.history)

    def _pack_sizes(self) -> dict[str, int]:
        sizes = {}
        for p in (self.root / "packs").glob("*.pack"):
            with contextlib.suppress(FileNotFoundError):
                if _is_digest(p.stem):
                    sizes[p.stem] = p.stat().st_size
        return sizes

    def _sweep(self, candidates: set[str] | None, *, dry_run: bool) -> GcReport:
        with self._locked():  # no record changes between the mark and the sweep
            referenced: set[str] = set()
            records = list((self.root / "tasks").glob("*.json"))
            for p in records:
                referenced |= digests_in(self._read(p) or b"")
            sizes = self._pack_sizes()
            pool = sizes.keys() if candidates is None else candidates & sizes.keys()
            gone = tuple(sorted(d for d in pool if d not in referenced))
            temp = 0
            if not dry_run:
                for d in gone:
                    self._pack_path(d).unlink(missing_ok=True)
                    self._pack_path(d, ".corrupt").unlink(missing_ok=True)
                if candidates is None:
                    for p in (self.root / "packs").glob("*.corrupt"):  # marks whose bytes are gone
                        if p.stem not in sizes:
                            p.unlink(missing_ok=True)
                    temp = self._remove_stale_temp_files()
        return GcReport(dry_run, len(records), 0, len(sizes) - len(gone), gone, sum(sizes[d] for d in gone), temp)

    def _remove_stale_temp_files(self) -> int:
        n, cutoff = 0, time.time() - _STALE_TEMP_S
        for sub in ("packs", "tasks", "backbones"):
            for p in (self.root / sub).glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        n += 1
        return n

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
