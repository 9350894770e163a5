"""Errors the server adds to the blockstore's tree, and the one place that maps them to HTTP.

The tree (blockstore's errors in brackets)::

    NetTailorError
    ├── [InvalidTaskId]             422 invalid_task_id
    ├── [PackError]                 422 corrupt_pack / unsupported_format / pack_task_mismatch
    │   └── [BackboneMismatch]      409 backbone_mismatch
    ├── [NotFound]                  404 task_not_found / version_not_found / ...
    ├── [StoreUnavailable]          503 store_unavailable
    ├── [CorruptRecord]             503 corrupt_record (a stored record of the wrong shape)
    ├── RequestError                a bad request the client can fix
    │   ├── UnsupportedMediaType    415 unsupported_media_type
    │   ├── BadImage                422 bad_image
    │   ├── PayloadTooLarge         413 payload_too_large
    │   ├── ImageTooLarge           413 image_too_large
    │   ├── BadTensor               422 bad_tensor (an Open Inference Protocol tensor that does not fit)
    │   └── TooManyTasks            422 validation_error
    ├── AuthError
    │   ├── Unauthorized            401 unauthorized
    │   └── Forbidden               403 forbidden
    ├── TaskUnavailable             503 task_unavailable (its stored pack cannot be served)
    ├── NotReady                    503 not_ready (no backbone loaded yet: the store holds none)
    └── Overloaded                  503 overloaded, with Retry-After

Framework answers are mapped too, so that every status is documented: a body the framework cannot
parse (400 from Starlette or FastAPI) is 422 ``validation_error``, a malformed task id in a path is
422 ``invalid_task_id``, and a 405 lists every method the path allows.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from blockstore.errors import (
    BackboneMismatch,
    CorruptRecord,
    InvalidTaskId,
    NetTailorError,
    NotFound,
    PackError,
    StoreUnavailable,
)
from blockstore.taskid import validate_task_id

__all__ = [
    "AuthError", "BadImage", "BadTensor", "ErrorBody", "Forbidden", "ImageTooLarge", "NotReady", "Overloaded",
    "PayloadTooLarge", "RequestError", "TaskUnavailable", "TooManyFiles", "TooManyTasks", "Unauthorized",
    "UnsupportedMediaType",
    "error_responses", "headers_of", "install_error_handlers", "status_of",
]

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error answer: a stable machine-readable code and a human-readable detail."""

    error: str
    detail: str


class RequestError(NetTailorError):
    code = "bad_request"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


class BadImage(RequestError):
    code = "bad_image"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class ImageTooLarge(RequestError):
    code = "image_too_large"


class BadTensor(RequestError):
    code = "bad_tensor"


class TooManyTasks(RequestError):
    code = "validation_error"


class TooManyFiles(RequestError):
    code = "validation_error"


class AuthError(NetTailorError):
    code = "unauthorized"


class Unauthorized(AuthError):
    code = "unauthorized"


class Forbidden(AuthError):
    code = "forbidden"


class TaskUnavailable(NetTailorError):
    code = "task_unavailable"


class NotReady(NetTailorError):
    code = "not_ready"


class Overloaded(NetTailorError):
    code = "overloaded"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


# Most specific first: the first isinstance match decides.
_STATUS: tuple[tuple[type[NetTailorError], int], ...] = (
    (BackboneMismatch, 409),
    (PackError, 422),
    (InvalidTaskId, 422),
    (NotFound, 404),
    (StoreUnavailable, 503),
    (CorruptRecord, 503),
    (NotReady, 503),
    (UnsupportedMediaType, 415),
    (PayloadTooLarge, 413),
    (ImageTooLarge, 413),
    (RequestError, 422),
    (Unauthorized, 401),
    (Forbidden, 403),
    (TaskUnavailable, 503),
    (Overloaded, 503),
)

_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type", 422: "validation_error"}


def status_of(exc: NetTailorError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries documenting the error body for ``statuses``."""
    return {s: {"model": ErrorBody, "description": "error: {error: code, detail: text}"} for s in statuses}


def _json(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(error=code, detail=detail).model_dump(), status_code=status, headers=headers)


def headers_of(exc: NetTailorError) -> dict[str, str] | None:
    """The headers an error answer carries (Retry-After on every 503, WWW-Authenticate on 401), on /v1
    and /v2 alike."""
    if isinstance(exc, Overloaded):
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, (StoreUnavailable, TaskUnavailable, NotReady, CorruptRecord)):
        return {"Retry-After": "1"}
    return None


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NetTailorError)
    status = status_of(exc)
    headers = headers_of(exc)
    if status >= 500 and not isinstance(exc, (StoreUnavailable, TaskUnavailable, Overloaded, NotReady, CorruptRecord)):
        log.error("unmapped domain error %s: %s", type(exc).__name__, exc.detail)
    return _json(status, exc.code, exc.detail, headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for e in exc.errors():
        if tuple(e.get("loc", ())) == ("path", "task_id"):  # the schema's pattern, checked by FastAPI
            try:
                validate_task_id(request.path_params.get("task_id"))
            except InvalidTaskId as bad:
                return _json(422, bad.code, bad.detail)
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return _json(422, "validation_error", "; ".join(parts) or "invalid request")


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette lists only the first matching route's)."""
    routes = request.app.router.routes
    ok = [m for m in _METHODS
          if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]
    return ", ".join(ok)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 400:  # a body the framework could not parse (not UTF-8, broken multipart)
        return _json(422, "validation_error", f"the request body cannot be parsed: {exc.detail}")
    if exc.status_code == 405:
        headers["Allow"] = _allowed(request)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return _json(exc.status_code, code, str(exc.detail), headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(NetTailorError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
