"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from blockstore import StoreUnavailable

from ..deps import MetricsDep
from ..schemas import Health, Readiness

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Alive")
async def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="Ready: backbone loaded and store reachable")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    backbone = getattr(state, "backbone", None)
    if backbone is None:
        why = getattr(state, "not_ready", None) or "the universal blocks are not loaded yet"
        body = Readiness(status="starting", detail=why)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    body = Readiness(status="ready", backbone_id=backbone.backbone_id, store="ok",
                     cached_tasks=len(state.cache.cached_tasks()), queue_depth=state.batcher.depth)
    try:
        await anyio.to_thread.run_sync(state.store.ping)
    except StoreUnavailable as e:
        body.status, body.store, body.detail = "degraded", "unreachable", f"{e.detail}; cached tasks keep serving"
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(body.model_dump())


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)
