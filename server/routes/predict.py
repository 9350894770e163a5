"""Inference endpoints: one image, a batch of images, one image through several tasks; and prefetch."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated

import pydantic_core
from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel

from blockstore import ALIAS_PATTERN, NetTailorError, validate_task_id

from ..deps import InferenceDep, SettingsDep
from ..errors import error_responses
from ..images import read_images
from ..schemas import BatchPrediction, MultiPrediction, Prediction
from ..versions import Pin
from .params import TaskId

__all__ = ["router"]

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["inference"])

_BINARY = {"type": "string", "format": "binary"}


def _json(model: BaseModel) -> Response:
    """The body straight from pydantic-core's serializer.  The core built the model, so FastAPI's
    response_model pass (validate again, dump, encode with the stdlib) is skipped: 80 us against 7 us
    per response on the 2-core machine.  response_model still documents the schema."""
    return Response(pydantic_core.to_json(model), media_type="application/json")


def _image_body(field: str, many: bool) -> dict:
    prop = {"type": "array", "items": _BINARY} if many else _BINARY
    content: dict[str, dict] = {
        "multipart/form-data": {"schema": {"type": "object", "properties": {field: prop}, "required": [field]}}}
    if not many:
        for t in ("image/jpeg", "image/png", "image/webp", "application/octet-stream"):
            content[t] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


_ERRORS = error_responses(404, 413, 415, 422, 503)
TopK = Annotated[int, Query(ge=1, le=1000, description="how many labels to return")]
NextTask = Annotated[str | None, Header(alias="X-NetTailor-Next-Task", description="the task this client will "
                                        "ask for next: the server may prefetch its pack")]
Version = Annotated[int | None, Query(ge=1, description="answer with this stored version of the task (it must "
                                      "still be retained: 404 lists those that are); default: the current one")]
Alias = Annotated[str | None, Query(description=f"answer with the version this alias points at ({ALIAS_PATTERN}); "
                                    "not together with version")]
_background: set[asyncio.Task] = set()


def _hint(inference, next_task: str | None) -> None:  # type: ignore[no-untyped-def]
    """Warm the hinted task's pack in the background; a bad hint is ignored."""
    if not next_task:
        return
    try:
        validate_task_id(next_task)
    except NetTailorError:
        return

    async def warm() -> None:
        try:
            (await inference.cache.acquire(next_task)).release()
        except Exception as e:
            log.debug("prefetch hint %s failed: %s", next_task, e)

    t = asyncio.ensure_future(warm())
    _background.add(t)
    t.add_done_callback(_background.discard)


@router.post("/tasks/{task_id}/predict", response_model=Prediction, responses=_ERRORS,
             openapi_extra=_image_body("file", many=False), summary="Classify one image with one task")
async def predict(task_id: TaskId, request: Request, inference: InferenceDep, settings: SettingsDep,
                  top_k: TopK = 5, next_task: NextTask = None, version: Version = None,
                  alias: Alias = None) -> Response:
    t0 = time.perf_counter()
    _hint(inference, next_task)
    validate_task_id(task_id)
    pin = Pin(version, alias)
    (blob,) = await read_images(request, field="file", max_files=1, max_file_bytes=settings.max_upload_bytes)
    return _json(await inference.predict(task_id, blob, top_k, t0, pin))


@router.post("/tasks/{task_id}/predict_batch", response_model=BatchPrediction, responses=_ERRORS,
             openapi_extra=_image_body("files", many=True), summary="Classify several images with one task")
async def predict_batch(task_id: TaskId, request: Request, inference: InferenceDep, settings: SettingsDep,
                        top_k: TopK = 5, next_task: NextTask = None, version: Version = None,
                        alias: Alias = None) -> Response:
    t0 = time.perf_counter()
    _hint(inference, next_task)
    validate_task_id(task_id)
    pin = Pin(version, alias)
    blobs = await read_images(request, field="files", max_files=settings.max_batch,
                              max_file_bytes=settings.max_upload_bytes)
    return _json(await inference.predict_batch(task_id, blobs, top_k, t0, pin))


@router.post("/predict", response_model=MultiPrediction, responses=_ERRORS,
             openapi_extra=_image_body("file", many=False), summary="Classify one image with several tasks")
async def predict_multi(request: Request, inference: InferenceDep, settings: SettingsDep,
                        tasks: Annotated[str, Query(description="comma-separated task ids")],
                        top_k: TopK = 5, next_task: NextTask = None, version: Version = None,
                        alias: Alias = None) -> Response:
    t0 = time.perf_counter()
    _hint(inference, next_task)
    pin = Pin(version, alias)  # the same version (or alias) of every task named
    (blob,) = await read_images(request, field="file", max_files=1, max_file_bytes=settings.max_upload_bytes)
    return _json(await inference.predict_multi(tasks, blob, top_k, t0, pin))


@router.post("/tasks/{task_id}/prefetch", status_code=204, response_class=Response,
             responses=error_responses(404, 422, 503), summary="Load a task's pack into the cache")
async def prefetch(task_id: TaskId, inference: InferenceDep) -> Response:
    validate_task_id(task_id)
    (await inference.cache.acquire(task_id)).release()
    return Response(status_code=204)
