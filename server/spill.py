"""The spill tier: folded tasks kept on local disk, so that a task evicted from memory comes back cheaply.

At 1,000 tasks the pack cache's budget holds a few hundred of them, and under Zipf popularity about a
quarter of the requests name a task it does not hold.  A cold load from the store (fetch 1.4 MB,
hash it, parse, fold) cost about 8 ms of the executor process's time at that load, and those loads
were 62% of it (bench/serve_bench.py).  A task that was folded once is written here, in the
executor's own layout, and its next load maps the file instead: no fetch, no hash, no fold.  The
write is the tier's own thread's (:meth:`SpillTier.save_later`), after the load returns; a load of
a task whose write is queued waits for it.

* **One file per (backbone, pack digest)**: a header, the task's description pickled with each
  tensor replaced by its place in the file, then the raw tensors, 64-byte aligned.  A load maps the
  file copy-on-write and makes each tensor a view of the mapping (``torch.frombuffer``): the pages
  are the page cache's, read on first use, and given back when the task's last tensor dies.
* **The store still decides**: before a file is used again, :meth:`blockstore.Store.check_pack` asks
  the store (one round trip, without the bytes) whether the digest is still stored and unmarked.
  So a digest marked corrupt, or collected, is refused exactly as a fetch would refuse it, and every
  replica tells one story whether or not it kept a copy here.
* **Bounded on disk**: at most ``budget`` bytes, least recently used files deleted first (a mapped
  file that is deleted stays valid for the tensors that map it).
* **Private**: each server instance writes into a directory of its own (:class:`PrivateDir`:
  ``mkdtemp``, mode 0700), made inside ``root`` (default: the system's temporary directory) and
  removed by :meth:`close`.  Only this instance writes there, which is why a file's pickle is
  trusted.  The directory's owner holds a lock on it (``flock``) while it lives, so a directory left
  behind by a process that was killed (SIGKILL, OOM) is removed by the next one made beside it.
* **Never a reason to fail**: a file that cannot be written (a full disk) or read back (truncated,
  damaged) is logged and dropped, and the load goes to the store as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import math
import mmap
import os
import pickle
import shutil
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from .prepared import PreparedTask, new_uid

__all__ = ["PrivateDir", "SpillTier", "open_private_dir", "open_spill"]

log = logging.getLogger(__name__)

_MAGIC = b"NTSPILL1"
_HEAD = struct.Struct("<8sQ")  # magic, length of the pickle that follows
_ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class _Writer(pickle.Pickler):
    """Pickles a task with each tensor replaced by (dtype, shape, index): the bytes go after it."""

    def __init__(self, buf: io.BytesIO) -> None:
        super().__init__(buf, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[Tensor] = []

    def persistent_id(self, obj: object) -> object:
        if isinstance(obj, Tensor):
            self.tensors.append(obj.detach().to("cpu").contiguous())
            return (str(obj.dtype).removeprefix("torch."), tuple(obj.shape), len(self.tensors) - 1)
        return None


class _Reader(pickle.Unpickler):
    """Undoes :class:`_Writer`: each tensor is a view of the mapped file.  Tensors are met in the order
    they were written, so each one's place follows from the sizes of those before it."""

    def __init__(self, meta: bytes, mapped: mmap.mmap, start: int, device: torch.device) -> None:
        super().__init__(io.BytesIO(meta))
        self.mapped, self.at, self.device, self.next = mapped, start, device, 0

    def persistent_load(self, pid: object) -> Tensor:
        assert isinstance(pid, tuple)
        dtype_name: str = pid[0]
        shape: tuple[int, ...] = pid[1]
        i: int = pid[2]
        if i != self.next:
            raise ValueError(f"tensor {i} where tensor {self.next} was expected")
        self.next += 1
        dtype = getattr(torch, dtype_name)
        count = math.prod(shape)
        at, self.at = self.at, _aligned(self.at + count * dtype.itemsize)
        if count == 0:
            return torch.empty(shape, dtype=dtype, device=self.device)
        t = torch.frombuffer(self.mapped, dtype=dtype, count=count, offset=at).view(shape)
        return t if self.device.type == "cpu" else t.to(self.device)


def _raw(t: Tensor) -> memoryview:
    """The tensor's bytes in C order, without a copy when it is contiguous."""
    a = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    return (a if a.flags.c_contiguous else a.copy(order="C")).data.cast("B")


_PREFIX = "nettailor-spill-"
_LOCK = ".owner.lock"
_UNLOCKED_GRACE_S = 3600.0  # a directory without a lock file: being made, or from an older release


class PrivateDir:
    """A directory of this process's own (mode 0700), locked while it lives; making one removes the
    abandoned ones beside it (their owner died: their lock is free)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        base = Path(root) if root is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        sweep(base)
        self.path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
        self._fd: int | None = os.open(self.path / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def clear(self) -> None:
        """Remove everything inside but the lock."""
        for p in self.path.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name != _LOCK:
                p.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_private_dir(root: str | os.PathLike[str] | None) -> PrivateDir | None:
    """A :class:`PrivateDir`, or None (logged) where none can be made: the spill tier is then off."""
    try:
        return PrivateDir(root)
    except OSError as e:
        log.warning("the spill tier is off: cannot make its directory in %s (%s)", root or tempfile.gettempdir(), e)
        return None


def open_spill(budget: int, root: str | os.PathLike[str] | None) -> SpillTier | None:
    """A :class:`SpillTier` of ``budget`` bytes (None when 0), or None (logged) where its directory
    cannot be made: a server without its spill tier still serves, loading from the store."""
    if budget <= 0:
        return None
    private = open_private_dir(root)
    return SpillTier(budget, private) if private is not None else None


def sweep(base: Path) -> list[Path]:
    """Remove the spill directories in ``base`` whose owner is gone; the ones removed."""
    gone = []
    for d in base.glob(f"{_PREFIX}*"):
        try:
            fd = os.open(d / _LOCK, os.O_RDWR)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - d.stat().st_mtime > _UNLOCKED_GRACE_S:
                    shutil.rmtree(d, ignore_errors=True)
                    gone.append(d)
            continue
        except OSError:  # not ours to open (another user's): leave it
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its owner holds it: alive
            os.close(fd)
            continue
        shutil.rmtree(d, ignore_errors=True)
        os.close(fd)
        gone.append(d)
        log.warning("removed spill directory %s, left behind by a process that did not stop cleanly", d)
    return gone


class SpillTier:
    """Folded tasks on local disk, keyed by (backbone, pack digest); thread-safe."""

    def __init__(self, budget: int, root: str | os.PathLike[str] | PrivateDir | None = None) -> None:
        """``root``: where to make the tier's :class:`PrivateDir`, or one already made (it is the tier's now)."""
        if budget <= 0:
            raise ValueError("a spill tier needs a positive budget (0 turns it off: use None)")
        self.budget = budget
        self._private = root if isinstance(root, PrivateDir) else PrivateDir(root)
        self.dir = self._private.path
        self._files: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, least recently used first
        self._bytes = 0
        self._lock = threading.Lock()
        self._pending: dict[str, Future[None]] = {}  # file name -> its write, queued by save_later
        self._writer: ThreadPoolExecutor | None = None
        self._closed = False
        self.hits = self.writes = 0

    def __repr__(self) -> str:
        return f"SpillTier({str(self.dir)!r}, {self._bytes}/{self.budget} bytes, {len(self._files)} tasks)"

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    @staticmethod
    def _name(backbone_id: str, sha256: str) -> str:
        return f"{backbone_id[:16]}-{sha256}.nts"

    def __contains__(self, key: tuple[str, str]) -> bool:
        """Whether (backbone, digest) is held here, or queued to be written."""
        name = self._name(*key)
        with self._lock:
            return name in self._files or name in self._pending

    def close(self) -> None:
        """Finish the queued writes, then delete every file and the directory (tensors still mapped
        stay valid)."""
        with self._lock:
            self._closed = True
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
        with self._lock:
            self._files.clear()
            self._bytes = 0
        self._private.close()

    def discard(self, backbone_id: str, sha256: str) -> None:
        """Forget the file of (backbone, digest), if any (once its queued write is done)."""
        name = self._name(backbone_id, sha256)
        self._wait_written(name)
        with self._lock:
            self._drop(name)

    def flush(self) -> None:
        """Wait for every write :meth:`save_later` has queued."""
        with self._lock:
            pending = list(self._pending.values())
        for write in pending:
            write.result()

    def _wait_written(self, name: str) -> None:
        with self._lock:
            write = self._pending.get(name)
        if write is not None:
            write.result()

    def save_later(self, backbone_id: str, task: PreparedTask) -> None:
        """:meth:`save` on the tier's writer thread, so that the load that folded ``task`` returns without
        waiting for the disk (2 ms of a 4.7 MB pack's cold switch on the 2-core machine).  Until it is
        written, the task counts as held here, and a load of it waits for the write."""
        name = self._name(backbone_id, task.sha256)
        with self._lock:
            if self._closed or name in self._pending:
                return
            if name in self._files:
                self._files.move_to_end(name)
                return
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nettailor-spill")
            self._pending[name] = self._writer.submit(self._write_queued, name, backbone_id, task)

    def _write_queued(self, name: str, backbone_id: str, task: PreparedTask) -> None:
        try:
            self.save(backbone_id, task)
        except Exception:  # save logs what it expects; this is for what it does not (never raised)
            log.exception("cannot spill task %r", task.task_id)
        finally:
            with self._lock:
                self._pending.pop(name, None)

    def _drop(self, name: str) -> None:
        """Under the lock."""
        size = self._files.pop(name, None)
        if size is not None:
            self._bytes -= size
        with contextlib.suppress(OSError):
            (self.dir / name).unlink()

    def save(self, backbone_id: str, task: PreparedTask) -> None:
        """Write ``task`` (folded, resident) for later loads; a failure is logged, never raised."""
        name = self._name(backbone_id, task.sha256)
        with self._lock:
            if name in self._files:
                self._files.move_to_end(name)
                return
        buf = io.BytesIO()
        w = _Writer(buf)
        w.dump(replace(task, uid=0))
        meta = buf.getvalue()
        offsets, at = [], _aligned(_HEAD.size + len(meta))  # where each tensor goes, as _Reader finds it
        for t in w.tensors:
            offsets.append(at)
            at = _aligned(at + t.numel() * t.element_size())
        if at > self.budget:
            return
        tmp = self.dir / f".{name}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_HEAD.pack(_MAGIC, len(meta)) + meta)
                for off, t in zip(offsets, w.tensors, strict=True):
                    f.seek(off)
                    f.write(_raw(t))
                f.truncate(at)
            os.replace(tmp, self.dir / name)
        except OSError as e:
            log.warning("cannot spill task %r to %s: %s", task.task_id, self.dir, e)
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        with self._lock:
            if name not in self._files:
                self._files[name] = at
                self._bytes += at
            self.writes += 1
            while self._bytes > self.budget and len(self._files) > 1:
                self._drop(next(iter(self._files)))

    def load(self, backbone_id: str, sha256: str, *, version: int, uid: int | None,
             device: torch.device) -> PreparedTask | None:
        """The task spilled under (backbone, digest), its tensors mapped from the file (copied to
        ``device`` when not the CPU), or None when none is held or the file cannot be read back."""
        name = self._name(backbone_id, sha256)
        self._wait_written(name)
        with self._lock:
            if name not in self._files:
                return None
            self._files.move_to_end(name)
        try:
            with open(self.dir / name, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            magic, n = _HEAD.unpack_from(mapped, 0)
            if magic != _MAGIC:
                raise ValueError("not a spill file")
            task = _Reader(mapped[_HEAD.size:_HEAD.size + n], mapped, _aligned(_HEAD.size + n), device).load()
            if not isinstance(task, PreparedTask) or task.sha256 != sha256:
                raise ValueError("the file holds another task")
        except Exception as e:  # damaged, truncated, deleted: the store has the bytes
            log.warning("spilled task %s... cannot be read back (%s: %s); loading it from the store",
                        sha256[:12], type(e).__name__, e)
            with self._lock:
                self._drop(name)
            return None
        with self._lock:
            self.hits += 1
        return replace(task, version=version, uid=new_uid() if uid is None else uid, spilled=True)
