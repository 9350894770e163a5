"""The executor process's side of :mod:`server.engine`, and the pipe's message format both sides use.

:func:`serve` is the spawned process's entry point: it receives the backbone, then runs batches until
told to stop, one thread per batch pipe (a lane), and cold loads (:func:`server.loading.load_stored`,
with the spill tier) on a thread and a pipe of their own.  Its coverage is the engine tests', run in
the child.

Each batch names the tasks the child must add (sent whole, or loaded again after a restart) and those
it may drop.  The server decides them in one order, under its mutex, and numbers the batches in that
order; the lanes apply them in the same order (:class:`_Order`), whatever order they arrive in, so
the child's tasks always match the server's mirror of them.
"""

from __future__ import annotations

import contextlib
import copyreg
import gc
import io
import pickle
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection

import torch
from torch import Tensor

from blockstore import Backbone, NetTailorError, Store

from .executor import Executor, PreparedTask
from .loading import LoadFailure, load_stored
from .memory import trim_heap
from .spill import open_spill

__all__ = ["Spec", "recv", "send", "serve"]

Spec = tuple[int, str, int, str]  # what the child loads from the store: uid, task id, version, sha256


def _tensor_as_array(t: Tensor) -> tuple:
    return torch.from_numpy, (t.detach().cpu().numpy(),)


class _Pickler(pickle.Pickler):
    """Tensors travel as NumPy arrays: a buffer copy, where torch's own pickling serialises each
    storage through torch.save (a cold task switch then spent about 30 ms sending a 4.7 MB task)."""

    dispatch_table = {**copyreg.dispatch_table, Tensor: _tensor_as_array}


def send(conn: Connection, msg: object) -> None:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(msg)
    conn.send_bytes(buf.getbuffer())


def recv(conn: Connection) -> object:
    return pickle.loads(conn.recv_bytes())


_ORDER_TIMEOUT_S = 60.0  # a batch numbered but never sent means a server that is gone or restarting us


class _Order:
    """Turns taken in the order the server numbered the batches (their changes to the held tasks)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0

    @contextlib.contextmanager
    def turn(self, seq: int) -> Iterator[None]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._next == seq, timeout=_ORDER_TIMEOUT_S):
                raise RuntimeError(f"batch {self._next} of the server's order never came (this is batch {seq})")
        try:
            yield
        finally:
            with self._cond:
                self._next = seq + 1
                self._cond.notify_all()



def serve(conns: list[Connection], load_conn: Connection, kernel: str | None, threads: int, store: Store | None,
          spill_spec: tuple[int, str] | None) -> None:  # pragma: no cover
    """The executor process: receive the backbone, then run batches (one thread per batch pipe) until
    told to stop, and cold loads on a thread and a pipe of their own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us
    torch.set_num_threads(threads)
    conn = conns[0]
    try:
        backbone = Backbone.from_bytes(conn.recv_bytes()).freeze().eval()
        executor = Executor(backbone, kernel=kernel)
        spill = open_spill(*spill_spec) if spill_spec is not None else None
    except Exception as e:
        send(conn, f"{type(e).__name__}: {e}")
        return
    tasks: dict[int, PreparedTask] = {}  # uid -> task; every thread changes it (single dict operations)

    def load(spec: Spec, trusted: bool = False) -> PreparedTask:
        assert store is not None
        uid, task_id, version, sha256 = spec
        task = tasks[uid] = load_stored(store, backbone, task_id, version, sha256, trusted, uid=uid, spill=spill)
        return task

    threading.Thread(target=_load_loop, args=(load_conn, load), name="nettailor-engine-load", daemon=True).start()
    order = _Order()
    for k, lane in enumerate(conns[1:], 1):
        threading.Thread(target=_batch_loop, args=(lane, executor, tasks, load, order),
                         name=f"nettailor-engine-lane-{k}", daemon=True).start()
    gc.collect()  # start-up objects (modules, the backbone) out of the collector's full passes, as in the
    gc.freeze()  # server (server.runtime): each pass over them paused a batch or a load for tens of ms
    send(conn, "ready")
    try:
        _batch_loop(conn, executor, tasks, load, order)  # the first lane; the process ends with it
    finally:
        if spill is not None:
            spill.close()


def _load_loop(conn: Connection, load: Callable[[Spec, bool], PreparedTask]) -> None:  # pragma: no cover
    """The child's load thread: one cold load at a time (a spec, and whether the server vouches for its
    digest: server.loading.load_stored), answered with the task's description."""
    try:
        while True:
            msg = recv(conn)
            assert isinstance(msg, tuple) and msg[0] == "load"
            try:
                reply: tuple = ("ok", load(msg[1], msg[2]).description())
            except LoadFailure as e:  # this task's stored bytes: remembered by the server's cache
                reply = ("fail", e.args)
            except NetTailorError as e:  # the store is unreachable, or answers nonsense: the server raises it
                reply = ("raise", e)
            except Exception as e:
                reply = ("error", f"{type(e).__name__}: {e}")
            send(conn, reply)
    except (EOFError, OSError):  # the server went away, or replaced this process
        return


def _batch_loop(conn: Connection, executor: Executor, tasks: dict[int, PreparedTask],
                load: Callable[[Spec], PreparedTask], order: _Order) -> None:  # pragma: no cover
    while True:
        try:
            msg = recv(conn)
        except (EOFError, OSError):  # the server went away
            return
        assert isinstance(msg, tuple)
        if msg[0] == "stop":
            return
        _, seq, new, evict, batch = msg
        try:
            with order.turn(seq):
                frames = _apply(tasks, load, new, evict, batch)
            out = executor.run_frames(frames)
            send(conn, ("ok", [[o.numpy() for o in row] for row in out]))
        except Exception as e:  # one bad batch fails alone; the server retries its frames one by one
            send(conn, ("error", f"{type(e).__name__}: {e}"))


def _apply(tasks: dict[int, PreparedTask], load: Callable[[Spec], PreparedTask], new: list, evict: list[int],
           batch: list) -> list[tuple[Tensor, list[PreparedTask]]]:  # pragma: no cover
    """A batch's changes to the held tasks, then its frames with their tasks (held by the frames from
    here on, whatever a later batch drops)."""
    for uid in evict:
        tasks.pop(uid, None)
    if evict:  # the freed tensors' pages back to the system (at most once a second: server.memory)
        trim_heap()
    for t in new:
        if isinstance(t, PreparedTask):
            tasks[t.uid] = t
        else:  # held by the child before it restarted: load it again
            load(t)
    return [(torch.from_numpy(x), [tasks[uid] for uid in uids]) for x, uids in batch]
