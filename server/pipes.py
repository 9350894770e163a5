"""The executor process's pipes, as the server side uses them (:mod:`server.engine`).

* :class:`Lanes`: slots on the batch pipes, granted in arrival order;
* :class:`Pipe`: one pipe with several messages in flight, each answer read by its own caller;
* :func:`close_all`: the pipes' ends, closed.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection

from .engine_child import recv, send

__all__ = ["Lanes", "Pipe", "close_all"]


class Lanes:
    """The child's batch pipes, granted in arrival order: a releasing holder hands its pipe to the
    longest waiter, so no batcher worker starves behind another that takes pipes back to back."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._mutex = threading.Lock()
        self._free: deque[int] = deque(range(count))
        self._waiters: deque[tuple[threading.Lock, list[int]]] = deque()

    def acquire(self) -> int:
        with self._mutex:
            if self._free:
                return self._free.popleft()
            turn, slot = threading.Lock(), list[int]()
            turn.acquire()
            self._waiters.append((turn, slot))
        turn.acquire()  # released by a holder handing its pipe over
        return slot[0]

    def release(self, lane: int) -> None:
        with self._mutex:
            if self._waiters:
                turn, slot = self._waiters.popleft()
                slot.append(lane)
                turn.release()
            else:
                self._free.append(lane)

    @contextlib.contextmanager
    def one(self) -> Iterator[int]:
        lane = self.acquire()
        try:
            yield lane
        finally:
            self.release(lane)

    @contextlib.contextmanager
    def every(self) -> Iterator[None]:
        """All the pipes: no batch in flight (one caller at a time: see ProcessExecutor._exclusive)."""
        taken = [self.acquire() for _ in range(self.count)]
        try:
            yield
        finally:
            for lane in taken:
                self.release(lane)


class Pipe:
    """One pipe to the child (a batch lane, with up to ``depth`` batches in flight as :class:`Lanes`
    grants the slots; or the load pipe).  Each message is built and sent under one lock, so the child
    reads them in the order they were built (server.engine numbers batches as it builds them), and
    the answers come back in that order, each read by its own caller.  So the next batch is already
    in the pipe when the child finishes one, instead of the child waiting for the server to hand it
    over."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send = threading.Lock()
        self._turn = threading.Condition()
        self._sent = 0  # messages sent
        self._answered = 0  # answers read (or given up on after a failed send)

    def call(self, make_msg: Callable[[], object]) -> object:
        """Send ``make_msg()`` (built under the send lock) and return the child's answer to it; raises
        what the pipe raises (a dead child), for this call and those already queued behind it."""
        with self._send:
            msg = make_msg()
            ticket, self._sent = self._sent, self._sent + 1
            failed: BaseException | None = None
            try:
                send(self.conn, msg)
            except BaseException as e:  # the answer is not read: the caller restarts the child
                failed = e
        with self._turn:
            self._turn.wait_for(lambda: self._answered == ticket)
        try:
            if failed is not None:
                raise failed
            return recv(self.conn)
        finally:
            with self._turn:
                self._answered += 1
                self._turn.notify_all()


def close_all(conns: Sequence[Connection | None]) -> None:
    for conn in conns:
        if conn is not None:
            conn.close()
