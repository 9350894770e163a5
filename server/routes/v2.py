"""The Open Inference Protocol (KServe v2 REST) beside /v1: one task is one model, the store version
is the model version (``/versions/{v}`` also takes an alias).  A thin layer over the same inference
service, pack cache and batcher as /v1; server.protocol_v2 decodes and encodes the tensors.

Errors on /v2 are ``{"error": text}`` with the status /v1 would use (422 becomes the protocol's 400):
this router's route class shapes every error raised under it, and a catch-all route answers unknown
/v2 paths, so /v1's error handlers never answer a /v2 request, nor these a /v1 one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from blockstore import TASK_ID_PATTERN, NetTailorError, StoreUnavailable, validate_task_id

from ..deps import InferenceDep, SettingsDep, TasksDep, require_operator
from ..errors import UnsupportedMediaType, headers_of, status_of
from ..images import read_body
from ..protocol_v2 import decode_request, encode_response, model_tensors
from ..schemas_v2 import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    RepositoryIndexRequest,
    RepositoryModel,
    ServerMetadata,
    V2Error,
    V2Readiness,
)
from ..versions import CURRENT, Pin

__all__ = ["install_v2_openapi", "router"]

log = logging.getLogger(__name__)
EXTENSIONS = ["binary_tensor_data", "model_repository", "parameters"]


def v2_error(exc: Exception) -> JSONResponse:
    """The protocol's error answer for anything raised under /v2."""
    headers = None
    if isinstance(exc, NetTailorError):
        status, text, headers = status_of(exc), exc.detail, headers_of(exc)
    elif isinstance(exc, RequestValidationError):
        status = 422
        text = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                         for e in exc.errors()) or "invalid request"
    elif isinstance(exc, StarletteHTTPException):
        status, text, headers = exc.status_code, str(exc.detail), getattr(exc, "headers", None)
    else:
        log.exception("unhandled error under /v2", exc_info=exc)
        status, text = 500, "internal server error"
    return JSONResponse(V2Error(error=text).model_dump(), status_code=400 if status == 422 else status,
                        headers=headers)


class _V2Route(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return v2_error(exc)

        return route


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the statuses a /v2 operation can send (tests/server/test_openapi.py
    makes each one happen): the protocol's error body."""
    return {s: {"model": V2Error, "description": "error: {error: text}"} for s in statuses}


_MODEL_ERRORS = _errors(400, 404, 503)  # a bad id or version, an unknown one, not ready / unservable
_INFER_ERRORS = _errors(400, 404, 413, 415, 503)
_REPO_ERRORS = _errors(400, 401, 403, 404, 503)
router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=_V2Route)
Model = Annotated[str, Path(description=f"task id, {TASK_ID_PATTERN}")]
VersionOrAlias = Annotated[str, Path(description="a store version (1, 2, ...) or an alias (production, ...)")]
_operator = [Depends(require_operator)]
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": InferenceRequest.model_json_schema()},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "JSON header then raw tensors (binary data extension)"}},
}}}


def _server_version() -> str:
    try:
        return package_version("nettailor")
    except PackageNotFoundError:  # a checkout run without installing
        return "0"


def install_v2_openapi(app: FastAPI) -> None:
    """Drop the 422 that FastAPI documents for every operation with parameters from the /v2 paths:
    under /v2 a validation error is answered 400, so 422 is never sent there."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()
        for path, ops in schema.get("paths", {}).items():
            if path.startswith("/v2"):
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- health and metadata ------------------------------------------------------------------------

@router.get("/health/live", response_model=LiveResponse, summary="Alive")
async def live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get("/health/ready", response_model=V2Readiness,
            responses={503: {"model": V2Readiness, "description": "not ready"}},
            summary="Ready: backbone loaded and store reachable")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    ok = getattr(state, "backbone", None) is not None
    if ok:
        try:
            await anyio.to_thread.run_sync(state.store.ping)
        except StoreUnavailable:
            ok = False
    return JSONResponse(V2Readiness(ready=ok).model_dump(), status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "1"})


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="nettailor", version=_server_version(), extensions=EXTENSIONS)


async def _metadata(task: str, pin: Pin, tasks: TasksDep) -> ModelMetadata:
    f = await tasks.version_facts(task, pin)
    inputs, outputs = model_tensors(f.preprocess, len(f.labels))
    return ModelMetadata(name=task, versions=[str(v) for v in f.versions], platform="nettailor", inputs=inputs,
                         outputs=outputs, parameters={"version": f.version, "pack_version": f.pack_version,
                                                      "aliases": f.aliases, "labels": f.labels, "top_k": 5})


@router.get("/models/{task}", response_model=ModelMetadata, responses=_MODEL_ERRORS,
            summary="Model metadata (the current version)")
async def model_metadata(task: Model, tasks: TasksDep) -> ModelMetadata:
    return await _metadata(task, CURRENT, tasks)


@router.get("/models/{task}/versions/{version}", response_model=ModelMetadata, responses=_MODEL_ERRORS,
            summary="Model metadata")
async def version_metadata(task: Model, version: VersionOrAlias, tasks: TasksDep) -> ModelMetadata:
    return await _metadata(task, Pin.parse(version), tasks)


@router.get("/models/{task}/ready", response_model=V2Readiness, responses=_MODEL_ERRORS,
            summary="Model ready: registered and servable")
async def model_ready(task: Model, tasks: TasksDep) -> V2Readiness:
    await tasks.version_facts(task, CURRENT)
    return V2Readiness(ready=True)


@router.get("/models/{task}/versions/{version}/ready", response_model=V2Readiness, responses=_MODEL_ERRORS,
            summary="Model version ready")
async def version_ready(task: Model, version: VersionOrAlias, tasks: TasksDep) -> V2Readiness:
    await tasks.version_facts(task, Pin.parse(version))
    return V2Readiness(ready=True)


# -- inference ----------------------------------------------------------------------------------

async def _infer(task: str, pin: Pin, request: Request, inference: InferenceDep, settings: SettingsDep) -> Response:
    t0 = time.perf_counter()
    validate_task_id(task)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise UnsupportedMediaType("compressed request bodies are not supported: send them uncompressed")
    body = await read_body(request, settings.max_upload_bytes * settings.max_batch + 1024 * 1024)
    req = decode_request(body, request.headers.get("inference-header-content-length"), settings.max_batch)
    result = await inference.infer(task, t0, images=req.images, tensor=req.tensor, pin=pin)
    content, headers = encode_response(task, result, req)
    return Response(content, headers=headers)


@router.post("/models/{task}/infer", response_model=InferenceResponse, openapi_extra=_INFER_BODY,
             responses=_INFER_ERRORS,
             summary="Classify images (BYTES) or preprocessed tensors (FP32) with the current version")
async def infer(task: Model, request: Request, inference: InferenceDep, settings: SettingsDep) -> Response:
    return await _infer(task, CURRENT, request, inference, settings)


@router.post("/models/{task}/versions/{version}/infer", response_model=InferenceResponse,
             openapi_extra=_INFER_BODY, responses=_INFER_ERRORS,
             summary="Classify with a stored version (or an alias's)")
async def version_infer(task: Model, version: VersionOrAlias, request: Request, inference: InferenceDep,
                        settings: SettingsDep) -> Response:
    return await _infer(task, Pin.parse(version), request, inference, settings)


# -- repository extension: load = prefetch, unload = evict, on this replica -----------------------

@router.post("/repository/index", response_model=list[RepositoryModel], responses=_errors(400, 503),
             summary="Every model and its state here")
async def repository_index(request: Request, tasks: TasksDep, inference: InferenceDep,
                           body: Annotated[RepositoryIndexRequest | None, Body()] = None) -> list[RepositoryModel]:
    cache = inference.cache
    out = []
    for task, version in await tasks.index():
        loaded = cache.cached_version(task) is not None
        if loaded or not (body and body.ready):
            out.append(RepositoryModel(name=task, version=str(version), state="READY" if loaded else "UNAVAILABLE",
                                       reason="" if loaded else "unloaded: loads on its first request"))
    return out


@router.post("/repository/models/{task}/load", dependencies=_operator, response_class=Response, responses=_REPO_ERRORS,
             summary="Load a model's current version into this replica's pack cache (operator token)")
async def load(task: Model, inference: InferenceDep) -> Response:
    validate_task_id(task)
    (await inference.cache.acquire(task)).release()
    return Response(status_code=200)


@router.post("/repository/models/{task}/unload", dependencies=_operator, response_class=Response,
             responses=_REPO_ERRORS,
             summary="Evict a model, every version, from this replica's pack cache (operator token)")
async def unload(task: Model, tasks: TasksDep, inference: InferenceDep) -> Response:
    await tasks.version_facts(task, CURRENT)  # 404 for an unknown task
    inference.cache.invalidate(task, reason="unloaded")
    inference.cache.invalidate_pinned(task, reason="unloaded")
    return Response(status_code=200)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"],
                  include_in_schema=False)
async def unknown(path: str, request: Request) -> Response:
    return v2_error(StarletteHTTPException(404, f"no route {request.method} /v2/{path}"))
