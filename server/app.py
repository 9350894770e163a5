"""The FastAPI app: ``create_app(settings)`` builds it; the lifespan owns every resource.

Start-up loads the universal blocks once onto the device (verifying their backbone id), opens the
store, subscribes the pack cache to store events and starts the executor's worker thread.  Run it
with ``nettailor serve`` or ``uvicorn --factory server.app:create_app``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
import torch
from fastapi import FastAPI

from blockstore import Backbone, BackboneMismatch, Store, StoreEvent, load_resident, open_store

from .batching import Batcher
from .cache import PackCache
from .errors import install_error_handlers
from .executor import Executor, executor_threads
from .inference import Inference
from .metrics import Metrics
from .routes import ops_router, predict_router, tasks_router
from .settings import Settings, get_settings
from .tasks import TaskManager

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DESCRIPTION = """Serve many vision tasks from one frozen network (NetTailor, CVPR 2019).

Errors are JSON `{"error": code, "detail": text}`; mutating calls need `Authorization: Bearer <token>`.
"""


def _load_backbone(store: Store, settings: Settings) -> Backbone:
    backbone = load_resident(store, settings.backbone, settings.device)
    expected = settings.backbone or store.default_backbone_id()
    if expected is not None and backbone.backbone_id != expected:
        raise BackboneMismatch(f"the store's backbone bytes hash to {backbone.backbone_id[:12]}..., "
                               f"not to their id {expected[:12]}...")
    return backbone


def _on_event(cache: PackCache, metrics: Metrics):  # type: ignore[no-untyped-def]
    """Store events: drop stale packs, and a deleted task's metric series."""

    def on_event(ev: StoreEvent) -> None:
        cache.on_event(ev)
        if ev.kind == "delete":
            metrics.forget_task(ev.task_id)

    return on_event


def _lifespan(settings: Settings):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        store = await anyio.to_thread.run_sync(open_store, settings.store)
        subscription = batcher = None
        try:
            backbone = await anyio.to_thread.run_sync(_load_backbone, store, settings)
            metrics = state.metrics
            cache = PackCache(store, backbone, settings.cache_bytes, metrics, failure_ttl=settings.failure_ttl_s)
            subscription = await anyio.to_thread.run_sync(store.subscribe, _on_event(cache, metrics))
            torch.set_num_threads(executor_threads(settings.torch_threads))
            batcher = Batcher(Executor(backbone), max_batch=settings.max_batch,
                              window_s=settings.batch_window_ms / 1000.0, max_queue=settings.max_queue,
                              metrics=metrics)
            state.store, state.cache, state.batcher = store, cache, batcher
            state.inference = Inference(cache, batcher, metrics, max_pixels=settings.max_pixels,
                                        max_tasks=settings.max_tasks_per_request)
            state.tasks = TaskManager(store, backbone, cache)
            # Start-up objects (modules, the backbone) never die: keep them out of the collector's
            # full passes, which otherwise pause a cold pack load for ~150 ms every few dozen loads.
            gc.collect()
            gc.freeze()
            state.backbone = backbone  # last: /readyz reports ready from here on
            log.info("serving backbone %s... on %s from %s", backbone.backbone_id[:12],
                     next(backbone.parameters()).device, store.url.split("@")[-1])
            yield
        finally:
            state.backbone = None
            if subscription is not None:
                subscription.close()
            if batcher is not None:
                batcher.close()
            store.close()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: :func:`get_settings`, read from ``NETTAILOR_*``).

    Raises :class:`server.settings.ConfigError` for a management API without a token, unless
    ``allow_open`` is set and the host is loopback."""
    settings = settings or get_settings()
    settings.check_security()
    app = FastAPI(title="NetTailor", version="1", description=_DESCRIPTION, lifespan=_lifespan(settings))
    app.state.settings = settings
    app.state.metrics = Metrics(max_task_labels=settings.metrics_max_tasks)
    app.state.backbone = None
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)
    app.include_router(predict_router)
    app.include_router(tasks_router)
    app.include_router(ops_router)
    return app
