"""The FastAPI app: ``create_app(settings)`` builds it; the lifespan owns every resource.

Start-up opens the store, loads the universal blocks once onto the device (the store verifies their
digest), subscribes the pack cache to store events and starts the executor's worker thread
(:mod:`server.runtime`).  With no backbone in the store yet it starts anyway, not ready, and becomes
ready when one is published.  Run it with ``nettailor serve`` or
``uvicorn --factory server.app:create_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from blockstore import open_store

from .drain import Drain, DrainMiddleware
from .errors import install_error_handlers
from .logs import RequestLogMiddleware
from .metrics import Metrics
from .routes import install_v2_openapi, ops_router, predict_router, tasks_router, v2_router
from .runtime import keep_trying, start
from .settings import Settings, get_settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_DESCRIPTION = """Serve many vision tasks from one frozen network (NetTailor, CVPR 2019).

Errors are JSON `{"error": code, "detail": text}`; mutating calls need `Authorization: Bearer <token>`.
`/v2` speaks the Open Inference Protocol (KServe v2): one task is one model, errors are `{"error": text}`.
"""


def _lifespan(settings: Settings):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        store = await anyio.to_thread.run_sync(
            functools.partial(open_store, settings.store, keep_versions=settings.keep_versions))
        state.store = store
        waiting: asyncio.Task | None = None
        try:
            if not await start(app, store, settings):
                waiting = asyncio.create_task(keep_trying(app, store, settings))
            yield
        finally:
            state.backbone = None
            if waiting is not None:
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
            runtime = getattr(state, "runtime", None)
            if runtime is not None:
                runtime.close()
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
    app.state.not_ready = "starting"
    # An empty id (PUT /v1/tasks/) is a 404 like any unknown path, not a redirect to another resource.
    app.router.redirect_slashes = False
    app.state.drain = Drain()
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    app.add_middleware(RequestLogMiddleware, access_log=settings.log_format == "json")  # outermost: ids on all
    install_error_handlers(app)
    app.include_router(predict_router)
    app.include_router(tasks_router)
    app.include_router(ops_router)
    app.include_router(v2_router)  # the Open Inference Protocol, with its own error shape
    install_v2_openapi(app)
    return app
