"""Dynamic micro-batching in front of the executor.

Requests put samples on one bounded queue; ONE dedicated worker thread takes the oldest sample, waits
up to ``window`` (counted from that sample's arrival) for up to ``max_batch`` samples, and hands
them, whatever their tasks, to :meth:`Executor.run` in one call, so samples of different tasks share
every universal block they both keep.  Results go back to each request's future on its event loop.

A full queue answers :class:`Overloaded` at once (with a Retry-After estimated from the recent cost
per sample) instead of queueing without bound.  A one-image-many-tasks job runs as its own call to
:meth:`Executor.run_multi`.  A batch that fails is retried one sample at a time, so a sample that
breaks the executor fails alone.
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

from torch import Tensor

from .errors import Overloaded
from .executor import Executor, PreparedTask
from .metrics import Metrics

__all__ = ["Batcher", "RunResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    logits: Tensor  # CPU float [num_classes]
    queue_s: float  # from submission to the start of its executor call
    infer_s: float  # the executor call that computed it
    batch_size: int


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    futures: list[asyncio.Future]
    task: PreparedTask | None = None  # a sample job: one (task, x)
    x: Tensor | None = None
    tasks: Sequence[PreparedTask] = ()  # a multi job: x through every task
    t_enq: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return 1 if self.task is not None else len(self.tasks)


class Batcher:
    def __init__(self, executor: Executor, *, max_batch: int = 32, window_s: float = 0.002,
                 max_queue: int = 256, metrics: Metrics | None = None) -> None:
        self.executor = executor
        self.max_batch, self.window_s, self.max_queue = max_batch, window_s, max_queue
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._depth = 0  # samples queued, not yet taken by the worker
        self._stop = False
        self._per_sample_s = 0.005  # running estimate, for Retry-After
        self._thread = threading.Thread(target=self._work, name="nettailor-executor", daemon=True)
        self._thread.start()

    # -- submission (event loop) -------------------------------------------------------------

    async def run(self, items: Sequence[tuple[PreparedTask, Tensor]]) -> list[RunResult]:
        """Queue samples (of any tasks) and wait for their logits, in order."""
        loop = asyncio.get_running_loop()
        jobs = [_Job(loop, [loop.create_future()], task=t, x=x) for t, x in items]
        self._put(jobs, len(jobs))
        return [r for job in jobs for r in await job.futures[0]]

    async def run_multi(self, x: Tensor, tasks: Sequence[PreparedTask]) -> list[RunResult]:
        """One image through several tasks (which share its preprocessing) in one executor call."""
        loop = asyncio.get_running_loop()
        job = _Job(loop, [loop.create_future()], x=x, tasks=list(tasks))
        self._put([job], job.size)
        return await job.futures[0]

    def _put(self, jobs: list[_Job], n: int) -> None:
        with self._cond:
            if self._stop:
                raise Overloaded("the server is shutting down", retry_after=1)
            if self._depth + n > self.max_queue:
                self.metrics.overloaded.inc()
                wait = math.ceil((self._depth + n) * self._per_sample_s)
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
            if first.task is not None:
                deadline = first.t_enq + self.window_s
                while n < self.max_batch:
                    if self._queue:
                        if self._queue[0].task is None:
                            break  # a multi job runs on its own
                        batch.append(self._queue.popleft())
                        n += 1
                        continue
                    left = deadline - time.perf_counter()
                    if left <= 0 or self._stop:
                        break
                    self._cond.wait(left)
            self._depth -= n
            self.metrics.queue_depth.set(self._depth)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._execute(batch)
            except Exception as e:  # never leave a request waiting
                log.exception("executor worker failed")
                for job in batch:
                    self._fail(job, e)

    def _execute(self, batch: list[_Job]) -> None:
        t0 = time.perf_counter()
        if batch[0].task is None:
            job = batch[0]
            try:
                out = self.executor.run_multi(job.x, job.tasks)  # type: ignore[arg-type]
            except Exception as e:
                self._fail(job, e)
                return
            dt = time.perf_counter() - t0
            self._observe(len(out), len({t.uid for t in job.tasks}) > 1, dt)
            self._deliver(job, [RunResult(o, t0 - job.t_enq, dt, len(out)) for o in out])
            return
        items = [(j.task, j.x) for j in batch]
        try:
            out = self.executor.run(items)  # type: ignore[arg-type]
        except Exception as e:
            if len(batch) == 1:
                self._fail(batch[0], e)
                return
            log.warning("a batch of %d failed (%s); running its samples one by one", len(batch), e)
            for job in batch:
                self._execute([job])
            return
        dt = time.perf_counter() - t0
        self._observe(len(batch), len({j.task.uid for j in batch}) > 1, dt)  # type: ignore[union-attr]
        for job, o in zip(batch, out):
            self._deliver(job, [RunResult(o, t0 - job.t_enq, dt, len(batch))])

    def _observe(self, size: int, mixed: bool, dt: float) -> None:
        self.metrics.observe_batch(size, mixed)
        self._per_sample_s = 0.9 * self._per_sample_s + 0.1 * (dt / max(1, size))

    @staticmethod
    def _settle(fut: asyncio.Future, value: object, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def _deliver(self, job: _Job, value: object) -> None:
        with contextlib.suppress(RuntimeError):  # the request's loop is gone
            job.loop.call_soon_threadsafe(self._settle, job.futures[0], value, None)

    def _fail(self, job: _Job, error: BaseException) -> None:
        log.error("executor failed for %s: %r", job.task.task_id if job.task else "a multi-task job", error)
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(self._settle, job.futures[0], None, error)

    # -- life cycle -----------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            left, self._queue = list(self._queue), deque()
        for job in left:
            self._fail(job, Overloaded("the server is shutting down"))
