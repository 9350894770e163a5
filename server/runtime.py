"""The serving runtime: everything that exists once the universal blocks are loaded.

A server may start before anything is trained.  With no backbone in the store (or a corrupt one, or
the store out of reach), start-up does not fail: the app serves ``/healthz`` and ``/metrics``,
answers ``/readyz`` 503 ``starting`` with the reason (``no backbone: ...``) and every task call 503
``not_ready``, and polls the store every ``backbone_poll_s`` until it can load a backbone.  It is
ready from then on, with no restart.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
from dataclasses import dataclass

import anyio.to_thread
import torch
from fastapi import FastAPI

from blockstore import (
    Backbone,
    BackboneNotFound,
    CorruptBackbone,
    NetTailorError,
    Store,
    StoreEvent,
    load_resident,
)
from blockstore.stores import Subscription

from .batching import Batcher
from .cache import PackCache
from .engine import ProcessExecutor, ceiling_for
from .executor import Executor, executor_parallelism
from .inference import Inference
from .loading import Prepare, load_stored
from .memory import trim_heap
from .metrics import Metrics
from .settings import Settings
from .spill import SpillTier, open_spill
from .tasks import TaskManager

__all__ = ["Runtime", "keep_trying", "start"]

log = logging.getLogger(__name__)

_PACK_GONE = ("delete", "update", "rollback")


@dataclass
class Runtime:
    backbone: Backbone
    cache: PackCache
    batcher: Batcher
    inference: Inference
    tasks: TaskManager
    subscription: Subscription
    spill: SpillTier | None = None

    def close(self) -> None:
        self.subscription.close()
        self.batcher.close()
        self.cache.close()
        if self.spill is not None:
            self.spill.close()


def _build(store: Store, settings: Settings, metrics: Metrics) -> Runtime:
    """Blocking: load the backbone (its digest verified by the store) and everything that needs it."""
    try:
        backbone = load_resident(store, settings.backbone, settings.device)
    except CorruptBackbone:
        metrics.integrity_failures.labels("backbone").inc()
        raise
    device = next(backbone.parameters()).device
    workers, threads = executor_parallelism(settings.executor_workers, settings.torch_threads)
    torch.set_num_threads(threads)
    executor: Executor | ProcessExecutor
    spill: SpillTier | None = None  # the in-process executor's (the executor process keeps its own)
    process = settings.executor_process if settings.executor_process is not None else (os.cpu_count() or 1) >= 2
    if process and device.type == "cpu":
        # The executor process also makes the cold loads, from its own connection to the store: pack
        # bytes and tensors never enter the server process, which keeps only each task's description.
        executor = ProcessExecutor(backbone, kernel=settings.executor_kernel, threads=threads, lanes=workers,
                                   depth=settings.executor_pipeline,
                                   ceiling_bytes=ceiling_for(settings.cache_bytes), store=store,
                                   spill_bytes=settings.spill_bytes, spill_dir=settings.spill_dir)
        prepare: Prepare | None = executor.load
    else:
        executor = Executor(backbone, kernel=settings.executor_kernel)
        spill = open_spill(settings.spill_bytes, settings.spill_dir)
        prepare = functools.partial(load_stored, store, backbone, spill=spill) if spill is not None else None
    cache = PackCache(store, backbone, settings.cache_bytes, metrics, failure_ttl=settings.failure_ttl_s,
                      prepare=prepare, load_threads=settings.load_threads)
    batcher = Batcher(executor, max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000.0,
                      max_queue=settings.max_queue, metrics=metrics,
                      workers=executor.slots if isinstance(executor, ProcessExecutor) else workers)
    tasks = TaskManager(store, backbone, cache)

    def on_event(ev: StoreEvent) -> None:
        cache.on_event(ev)  # and its record table, first
        if ev.kind == "delete":  # what this replica remembers of the task goes with it
            tasks.forget(ev.task_id)
            metrics.forget_task(ev.task_id)
        if ev.kind in _PACK_GONE:  # a pack's buffers were freed: give their pages back (server.memory)
            trim_heap()

    try:
        subscription = store.subscribe(on_event)
    except BaseException:
        batcher.close()
        cache.close()
        if spill is not None:
            spill.close()
        raise
    inference = Inference(cache, batcher, metrics, max_pixels=settings.max_pixels,
                          max_tasks=settings.max_tasks_per_request)
    return Runtime(backbone, cache, batcher, inference, tasks, subscription, spill)


def _publish(app: FastAPI, rt: Runtime, store: Store) -> None:
    state = app.state
    state.cache, state.batcher, state.inference, state.tasks, state.runtime = (
        rt.cache, rt.batcher, rt.inference, rt.tasks, rt)
    # Start-up objects (modules, the backbone) never die: keep them out of the collector's
    # full passes, which otherwise pause a cold pack load for ~150 ms every few dozen loads.
    gc.collect()
    gc.freeze()
    state.not_ready = None
    state.backbone = rt.backbone  # last: /readyz reports ready from here on
    log.info("serving backbone %s... on %s from %s", rt.backbone.backbone_id[:12],
             next(rt.backbone.parameters()).device, store.url.split("@")[-1])


async def start(app: FastAPI, store: Store, settings: Settings) -> bool:
    """Try once to build the runtime; True when the app is ready.  On failure the reason is kept in
    ``app.state.not_ready`` for /readyz and for the 503s."""
    try:
        rt = await anyio.to_thread.run_sync(_build, store, settings, app.state.metrics)
    except BackboneNotFound as e:
        app.state.not_ready = f"no backbone: {e.detail}"
        return False
    except NetTailorError as e:  # a corrupt backbone, the store out of reach: wait for it to be fixed
        app.state.not_ready = f"cannot load the backbone: {e.detail}"
        return False
    _publish(app, rt, store)
    return True


async def keep_trying(app: FastAPI, store: Store, settings: Settings) -> None:
    """Poll until :func:`start` succeeds (run as a task by the lifespan, cancelled at shutdown)."""
    log.warning("not ready: %s; polling the store every %.1f s", app.state.not_ready, settings.backbone_poll_s)
    last = app.state.not_ready
    while True:
        await asyncio.sleep(settings.backbone_poll_s)
        if await start(app, store, settings):
            return
        if app.state.not_ready != last:
            last = app.state.not_ready
            log.warning("still not ready: %s", last)
