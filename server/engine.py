"""The executor in a process of its own, so that it never waits for the event loop's GIL.

In one process, the executor thread and the event loop share one GIL.  A mixed batch is a few
hundred small torch operators; each releases the GIL and must take it back, and at saturation the
event loop holds it in bursts.  Measured on the 2-core machine at N = 20, C = 32 (bench/serve_bench.py):
the executor call for a batch of 16 took 61 ms in the server against about 32 ms in a plain loop,
and neither thread used more than 0.6 of a core.

:class:`ProcessExecutor` has :class:`server.executor.Executor`'s ``run_frames``, so the
:class:`server.batching.Batcher` is unchanged; batching, the queue bound and every metric stay in
the server process.  Behind it, a child process (``spawn``; its side, and the pipe's message format, in
:mod:`server.engine_child`) holds a copy of the frozen backbone and runs the real executor:

* a batch crosses a pipe as NumPy arrays (the frames in, the logits out): a pickle of plain
  buffers, no torch serialisation and no shared-memory handle per tensor;
* with a store (the server's default), the child also makes the pack cache's cold loads
  (:func:`server.loading.load_stored`: fetch, verify, validate, fold) and keeps the tensors; the server
  keeps only each task's description (:meth:`PreparedTask.description`), so pack bytes and tensors
  never enter the server process, whose GIL the event loop needs (measured at N = 1,000 tasks: a
  4 ms load took 20-270 ms in the server process, and half its memory was a second copy of the tasks);
  loads have a pipe and a thread of their own in the child, so they run beside the batch in flight
  instead of waiting for it; with a spill tier (server.spill), a task folded before is mapped back
  from local disk;
* the server mirrors which tasks the child holds and names, with the next batch, those it has let go
  of itself, so the child holds what the server still references (and, as a guard against a leak,
  no more than a ceiling); a task the child lacks (after a restart) is loaded again from the store
  with the batch, or sent whole when the server holds its tensors (no store);
* the child runs ``lanes`` batches side by side, each on a pipe and a thread of its own (on the
  2-core machine two lanes of one intra-op thread each ran 1.7-1.9x one, where two intra-op threads
  on one batch ran slower than one: see :func:`server.executor.executor_parallelism`); each pipe
  carries up to ``depth`` batches (:class:`server.pipes.Pipe`), so the next batch is already there
  when one ends; the pipes' slots are granted in arrival order (:class:`server.pipes.Lanes`), so no
  batcher worker starves behind another;
* the child dying (OOM, a crash) is noticed on the batch in hand: a new child is started and the
  batch is tried once more; a second death answers :class:`EngineError` (503), and the batcher
  retries that batch's frames one by one, so a frame that kills the executor fails alone.

CPU only: on a GPU the executor thread spends its time waiting for kernels, with the GIL released.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from blockstore import Backbone, Store

from .engine_child import Spec, recv, send, serve
from .errors import Overloaded
from .executor import PreparedTask
from .loading import LoadFailure
from .pipes import Lanes, Pipe, close_all
from .prepared import new_uid
from .spill import open_private_dir

__all__ = ["EngineError", "ProcessExecutor", "ceiling_for"]

log = logging.getLogger(__name__)

_START_TIMEOUT_S = 300.0
Frames = Sequence[tuple[Tensor, Sequence[PreparedTask]]]


class EngineError(Overloaded):
    """The executor process failed a batch, or died running it twice (503, retry later)."""


def ceiling_for(cache_bytes: int) -> int:
    """The executor process's ceiling for a pack cache budget: twice the budget, room for the tasks
    the cache serves without keeping or still leases after an eviction (see ProcessExecutor)."""
    return 2 * cache_bytes


class ProcessExecutor:
    """``run_frames`` through a child process running :class:`Executor` (thread-safe: ``lanes`` batches
    at a time)."""

    def __init__(self, backbone: Backbone, *, kernel: str | None = None, threads: int = 1, lanes: int = 1,
                 ceiling_bytes: int = ceiling_for(256 * 1024 * 1024), store: Store | None = None,
                 spill_bytes: int = 0, spill_dir: str | None = None, depth: int = 1) -> None:
        """``ceiling_bytes``: a guard, not the cache's budget.  The child holds the tasks the server still
        references (weakref callbacks name the others); only a reference leak in the server would take
        it past the ceiling, where it drops its least recently used tasks (sent or loaded again when
        next used).  The server passes :func:`ceiling_for` its pack cache's budget (server.runtime).

        ``lanes``: batches the child runs side by side, each on a pipe and a thread of its own with
        ``threads`` intra-op threads (see :func:`server.executor.executor_parallelism`).  ``depth``:
        batches in flight on each pipe (:class:`server.pipes.Pipe`): with 2, the next batch waits in the pipe
        while one computes, so the child goes from one batch to the next without waiting for the
        server; feed it with :attr:`slots` batcher workers.

        ``spill_bytes``: the child's spill tier (server.spill; 0: none), in a directory made here inside
        ``spill_dir``, emptied when a child is replaced and removed by :meth:`close`."""
        if next(backbone.parameters()).device.type != "cpu":
            raise ValueError("the executor process is for CPU serving; on a GPU use the in-process executor")
        self.device = torch.device("cpu")
        self.kernel, self.threads, self.ceiling = kernel, threads, ceiling_bytes
        self.store = store  # reopened in the child: it loads tasks itself (see load)
        self.spill_bytes = spill_bytes if store is not None else 0
        self._spill_root = open_private_dir(spill_dir) if self.spill_bytes else None
        self._blob = backbone.to_bytes()
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self.lanes = lanes
        self._lanes = Lanes(lanes * depth)  # slots on the batch pipes: slot k sends on pipe k % lanes
        self._excl = threading.Lock()  # one caller at a time takes every pipe (a start, a restart, close)
        self._load_lock = threading.Lock()  # the load pipe: cold loads run beside batches (see load)
        self._mutex = threading.Lock()  # _held, _held_bytes, _seq: the batch and load paths change them
        self._gen = 0  # the child's generation: a load answered by a child since replaced is not held
        self._seq = 0  # the next batch's place in the order the child applies the batches' changes in
        self._ctx = mp.get_context("spawn")
        self._proc: mp.process.BaseProcess | None = None
        self._conns: list[Pipe] | None = None
        self._load_conn: Pipe | None = None
        # Task uid -> (bytes, the server's object), as the child holds them.  A task the server has let
        # go (deleted, replaced, evicted from its cache and no longer leased) is dropped from the
        # child with the next batch, so the child never holds more than the server does.
        self._held: OrderedDict[int, tuple[int, weakref.ref[PreparedTask]]] = OrderedDict()
        self._held_bytes = 0
        self._gone: deque[int] = deque()  # uids whose server object died (weakref callbacks, any thread)
        self.restarts = 0
        with self._exclusive():
            self._start()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Every pipe: no batch and no load in flight.  The order is always (pipes, load pipe), and a
        caller holding one pipe releases it first (run_frames), so no two callers wait on each other."""
        with self._excl, self._lanes.every(), self._load_lock:
            yield

    # -- the child's life ---------------------------------------------------------------------

    def _start(self) -> None:
        """Exclusive."""
        pipes = [self._ctx.Pipe() for _ in range(self.lanes)]
        parent = pipes[0][0]
        load_parent, load_child = self._ctx.Pipe()
        if self._spill_root is not None:  # a dead child's files: its successor starts with none
            self._spill_root.clear()
        spill = (self.spill_bytes, str(self._spill_root.path)) if self._spill_root is not None else None
        proc = self._ctx.Process(target=serve, args=([c for _, c in pipes], load_child, self.kernel, self.threads,
                                                     self.store, spill), name="nettailor-engine", daemon=True)
        proc.start()
        for _, child in pipes:
            child.close()
        load_child.close()
        t0 = time.perf_counter()
        try:
            parent.send_bytes(self._blob)
            if not parent.poll(_START_TIMEOUT_S):
                raise EngineError(f"the executor process did not start within {_START_TIMEOUT_S:.0f} s")
            reply = recv(parent)
        except (EOFError, OSError) as e:
            proc.kill()
            close_all([p for p, _ in pipes] + [load_parent])
            raise EngineError(f"the executor process died while starting (exit code {proc.exitcode}): {e}") from None
        if reply != "ready":
            proc.kill()
            close_all([p for p, _ in pipes] + [load_parent])
            raise EngineError(f"the executor process failed to start: {reply}")
        self._proc, self._conns, self._load_conn = proc, [Pipe(p) for p, _ in pipes], Pipe(load_parent)
        self._gen += 1
        with self._mutex:
            self._held.clear()
            self._held_bytes = 0
            self._seq = 0
        log.info("executor process %d ready in %.1f s", proc.pid, time.perf_counter() - t0)

    def _stop_child(self) -> None:
        """Exclusive."""
        proc, conns = self._proc, [p.conn for p in self._conns or []]
        load_conn = self._load_conn.conn if self._load_conn is not None else None
        self._proc, self._conns, self._load_conn = None, None, None
        for conn in conns:
            with contextlib.suppress(OSError):
                send(conn, ("stop",))
        close_all([*conns, load_conn])
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    def close(self) -> None:
        with self._exclusive():
            self._stop_child()
            if self._spill_root is not None:
                self._spill_root.close()

    @property
    def slots(self) -> int:
        """Batches in flight at most (``lanes x depth``): the batcher workers that keep them busy."""
        return self._lanes.count

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- batches --------------------------------------------------------------------------------

    def _hold(self, t: PreparedTask) -> None:
        """Under the mutex."""
        uid = t.uid
        self._held[uid] = (t.nbytes, weakref.ref(t, lambda _ref: self._gone.append(uid)))
        self._held_bytes += t.nbytes

    def _sync(self, frames: Frames) -> tuple[int, list[PreparedTask | Spec], list[int]]:
        """The batch's number in the order the child applies batches' changes in (server.engine_child),
        the tasks the child lacks (sent with the batch: whole, or as what to load from the store), and
        the uids it may drop: those the server let go, and least recently used ones beyond the ceiling.

        The pack cache's budget is not applied here.  Tasks that the cache serves without keeping them
        (admission) or still leases after an eviction are alive in the server beyond its budget; when
        the child dropped least recently used tasks at that budget, it dropped tasks the cache still
        held, and their next hit was loaded again inside a batch (56 such loads in 3,600 Zipf requests
        over 300 tasks with room for 60, one batch at a time)."""
        with self._mutex:
            new, evict = self._sync_held(frames)
            seq, self._seq = self._seq, self._seq + 1
            return seq, new, evict

    def _sync_held(self, frames: Frames) -> tuple[list[PreparedTask | Spec], list[int]]:
        new: list[PreparedTask | Spec] = []
        used: set[int] = set()
        for _, tasks in frames:
            for t in tasks:
                if t.uid in used:
                    continue
                used.add(t.uid)
                if t.uid in self._held:
                    self._held.move_to_end(t.uid)
                else:
                    new.append(t if t.resident else (t.uid, t.task_id, t.version, t.sha256))
                    self._hold(t)
        evict: list[int] = []
        while self._gone:  # let go by the server since the last batch: no scan of every held task
            uid = self._gone.popleft()
            held = self._held.pop(uid, None)  # None: cleared by a restart meanwhile
            if held is not None:
                self._held_bytes -= held[0]
                evict.append(uid)
        if self._held_bytes > self.ceiling:  # a leak in the server: least recently used first
            for uid in list(self._held):
                if self._held_bytes <= self.ceiling:
                    break
                if uid not in used:
                    self._held_bytes -= self._held.pop(uid)[0]
                    evict.append(uid)
        return new, evict

    def load(self, task_id: str, version: int, sha256: str, trusted: bool = False) -> PreparedTask:
        """A cold load in the child (:func:`server.loading.load_stored`, ``trusted`` as there): the child
        keeps the tensors, the server gets the task's description.  Raises :class:`server.loading.LoadFailure`, or
        :class:`EngineError` when the child dies loading (it is restarted; the load is not retried).

        Loads have a pipe and a thread of their own in the child, so a load never waits for the batch
        in flight, nor a batch for a load (at N = 1,000 tasks a load waited about 15 ms for the batch
        ahead of it; bench/serve_bench.py).  One load at a time."""
        if self.store is None:
            raise RuntimeError("this executor process has no store to load from")
        uid = new_uid()
        self._ensure_started()
        died: BaseException | None = None
        with self._load_lock:
            gen, pipe = self._gen, self._load_conn
            if pipe is None:  # closed meanwhile
                raise EngineError("the executor process is stopped", retry_after=1)
            try:
                reply = pipe.call(lambda: ("load", (uid, task_id, version, sha256), trusted))
            except (EOFError, OSError) as e:
                died = e
        if died is not None:
            self._restart(gen, died)
            raise EngineError(f"the executor process died loading task {task_id!r}", retry_after=1)
        assert isinstance(reply, tuple)
        if reply[0] == "fail":
            raise LoadFailure(*reply[1])
        if reply[0] == "raise":
            raise reply[1]
        if reply[0] == "error":
            raise EngineError(f"the executor process failed to load task {task_id!r}: {reply[1]}")
        task = reply[1]
        assert isinstance(task, PreparedTask) and task.uid == uid
        with self._mutex:
            if self._gen == gen:  # else a new child lacks it: the first batch naming it loads it again
                self._hold(task)
        return task

    def _ensure_started(self) -> None:
        if self._conns is None:  # closed, or a start failed: start a child
            with self._exclusive():
                if self._conns is None:
                    self._start()

    def _restart(self, gen: int, why: BaseException) -> int | None:
        """Replace the child of generation ``gen`` unless that was done meanwhile (a death is seen by
        every pipe alike); its exit code.  Takes every pipe: call it holding none."""
        with self._exclusive():
            if self._gen != gen:
                return None
            code = self._proc.exitcode if self._proc is not None else None
            self.restarts += 1
            log.error("the executor process died (exit code %s, %s); starting a new one", code, why)
            self._stop_child()
            self._start()
            return code

    def run_frames(self, frames: Frames) -> list[list[Tensor]]:
        """Logits (CPU, float) for every (frame, task) pair, in order, computed in the child.

        If the child dies, a new one is started and the batch is tried once more on it; a second
        death raises :class:`EngineError` (the batcher then retries the frames one by one)."""
        batch = [(np.ascontiguousarray(x.detach().cpu().numpy()), [t.uid for t in tasks]) for x, tasks in frames]

        def message() -> tuple:  # numbered as sent (see server.pipes.Pipe)
            seq, new, evict = self._sync(frames)
            return ("run", seq, new, evict, batch)

        for attempt in (1, 2):
            self._ensure_started()
            died: BaseException | None = None
            with self._lanes.one() as slot:
                conns, gen = self._conns, self._gen  # neither changes while a slot is held
                if conns is None:  # closed meanwhile
                    raise EngineError("the executor process is stopped", retry_after=1)
                try:
                    reply = conns[slot % len(conns)].call(message)
                except Exception as e:  # a dead child, or a pipe out of step with it: a new child either way
                    died = e
            if died is not None:
                code = self._restart(gen, died)
                if attempt == 2:
                    raise EngineError(f"the executor process died twice running a batch (exit code {code})",
                                      retry_after=1) from None
                continue
            assert isinstance(reply, tuple)
            if reply[0] != "ok":
                raise EngineError(f"the executor process failed a batch: {reply[1]}")
            return [[torch.from_numpy(a) for a in row] for row in reply[1]]
        raise AssertionError("unreachable")
