"""Dynamic micro-batching in front of the executor.

Requests put *frames* on one bounded queue: an image and the tasks that read it (one task for a
single-task request, several for ``?tasks=a,b,c``).  A worker thread takes the oldest frame, waits
up to ``window`` (counted from that frame's arrival) for up to ``max_batch`` rows (one row per frame
and task), and hands every frame it took, whatever its tasks, to :meth:`Executor.run_frames` in one
call: single-task samples and multi-task frames share every universal block they keep, and a
multi-task frame's stem and shared frozen-BN prefixes still run once.  Results go back to each
request's future on its event loop, one loop wake-up per batch.

``workers`` threads may do this side by side (inter-op parallelism): while one runs a batch, the
next fills and runs on another core; one worker forms a batch at a time.  A batch that would run
beside another one waits, past the window, for half a batch of rows or for the other to finish:
otherwise a closed loop of C clients splits into batches of C / workers rows, each costlier per row.
With the executor process the default is two workers feeding its one lane, whose pipe holds the
next batch while one computes (:func:`server.executor.executor_parallelism` says why).

A full queue answers :class:`Overloaded` at once (with a Retry-After estimated from the recent cost
per row) instead of queueing without bound.  A batch that fails is retried one frame at a time, so
a frame that breaks the executor fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

from .errors import Overloaded
from .executor import Executor, PreparedTask
from .metrics import Metrics

if TYPE_CHECKING:
    from .engine import ProcessExecutor

__all__ = ["Batcher", "RunResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    logits: Tensor  # CPU float [num_classes]
    queue_s: float  # from submission to the start of its executor call
    infer_s: float  # the executor call that computed it (with the executor process, its wait in the pipe too)
    batch_size: int  # rows (frame x task pairs) in that call


@dataclass(eq=False)
class _Job:
    """One frame: an image and the tasks that read it."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    x: Tensor
    tasks: Sequence[PreparedTask]
    t_enq: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return len(self.tasks)


class Batcher:
    def __init__(self, executor: Executor | ProcessExecutor, *, max_batch: int = 32, window_s: float = 0.002,
                 max_queue: int = 256, metrics: Metrics | None = None, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.executor = executor
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()
        self._collecting = threading.Lock()  # one worker forms a batch at a time; they run side by side
        self._queue: deque[_Job] = deque()
        self._depth = 0  # rows queued, not yet taken by the worker
        self._running = 0  # batches in the executor
        self._beside_rows = max(1, max_batch // 2)  # rows a batch needs to run beside another
        self._stop = False
        self._per_row_s = 0.005  # running estimate, for Retry-After
        self._threads = [threading.Thread(target=self._work, name=f"nettailor-executor-{k}", daemon=True)
                         for k in range(workers)]
        for t in self._threads:
            t.start()

    # -- submission (event loop) -------------------------------------------------------------

    async def run_frames(self, frames: Sequence[tuple[Tensor, Sequence[PreparedTask]]]) -> list[list[RunResult]]:
        """Queue frames (each an image and its tasks) and wait for every (frame, task) result, in order."""
        loop = asyncio.get_running_loop()
        jobs = [_Job(loop, loop.create_future(), x, tuple(tasks)) for x, tasks in frames]
        self._put(jobs, sum(j.size for j in jobs))
        return [await job.future for job in jobs]

    async def run(self, items: Sequence[tuple[PreparedTask, Tensor]]) -> list[RunResult]:
        """Queue samples (of any tasks) and wait for their logits, in order."""
        return [r for (r,) in await self.run_frames([(x, (t,)) for t, x in items])]

    async def run_multi(self, x: Tensor, tasks: Sequence[PreparedTask]) -> list[RunResult]:
        """One image through several tasks: batched with whatever else is queued."""
        return (await self.run_frames([(x, tasks)]))[0]

    def _put(self, jobs: list[_Job], n: int) -> None:
        with self._cond:
            if self._stop:
                raise Overloaded("the server is shutting down", retry_after=1)
            if self._depth + n > self.max_queue:
                self.metrics.overloaded.inc()
                wait = math.ceil((self._depth + n) * self._per_row_s)
                raise Overloaded(f"the request queue is full ({self._depth} of {self.max_queue} samples waiting); "
                                 f"retry later", retry_after=wait)
            self._queue.extend(jobs)
            self._depth += n
            self.metrics.queue_depth.set(self._depth)
            self._cond.notify()

    @property
    def depth(self) -> int:
        return self._depth

    # -- the worker thread ----------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, n = [first], first.size
            deadline = first.t_enq + self.window_s
            while n < self.max_batch:
                if self._queue:
                    if n + self._queue[0].size > self.max_batch:
                        break  # the next frame would overflow the batch: it opens the next one
                    job = self._queue.popleft()
                    batch.append(job)
                    n += job.size
                    continue
                left = deadline - time.perf_counter()
                if self._stop or (left <= 0 and (not self._running or n >= self._beside_rows)):
                    break
                self._cond.wait(left if left > 0 else None)  # woken by a frame, or a batch done
            self._depth -= n
            self._running += 1
            self.metrics.queue_depth.set(self._depth)
            return batch

    def _work(self) -> None:
        while True:
            with self._collecting:
                batch = self._take()
            if batch is None:
                return
            try:
                self._execute(batch)
            except Exception as e:  # never leave a request waiting
                log.exception("executor worker failed")
                self._settle_all([(job, None, e) for job in batch])
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()  # a batch waiting to run beside this one may go now

    def _execute(self, batch: list[_Job]) -> None:
        t0 = time.perf_counter()
        try:
            out = self.executor.run_frames([(j.x, j.tasks) for j in batch])
        except Exception as e:
            if len(batch) == 1:
                log.error("executor failed for %s: %r", ",".join(t.task_id for t in batch[0].tasks), e)
                self._settle_all([(batch[0], None, e)])
                return
            log.warning("a batch of %d frames failed (%s); running them one by one", len(batch), e)
            for job in batch:
                self._execute([job])
            return
        dt = time.perf_counter() - t0
        rows = sum(j.size for j in batch)
        self.metrics.observe_batch(rows, len({t.uid for j in batch for t in j.tasks}) > 1)
        self._per_row_s = 0.9 * self._per_row_s + 0.1 * (dt / max(1, rows))
        self._settle_all([(j, [RunResult(o, t0 - j.t_enq, dt, rows) for o in logits], None)
                          for j, logits in zip(batch, out)])

    @staticmethod
    def _settle(results: list[tuple[_Job, object, BaseException | None]]) -> None:
        for job, value, error in results:
            if job.future.done():
                continue
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(value)

    def _settle_all(self, results: list[tuple[_Job, object, BaseException | None]]) -> None:
        """Hand results to their event loops: one thread-safe call (one wake-up) per loop, not per job."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for r in results:
            by_loop.setdefault(r[0].loop, []).append(r)
        for loop, rs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the request's loop is gone
                loop.call_soon_threadsafe(self._settle, rs)

    # -- life cycle -----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            left, self._queue = list(self._queue), deque()
        self._settle_all([(job, None, Overloaded("the server is shutting down")) for job in left])
        self.executor.close()  # an executor process stops with its batcher
