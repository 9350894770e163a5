"""Request ids and structured logs.

Every HTTP request gets a request id: the caller's ``X-Request-ID`` when it is a sane token (a load
balancer or a client that traces across services sets one), else a fresh one.  The response echoes
it in ``X-Request-ID``, and every log line written while the request runs carries it.

``NETTAILOR_LOG_FORMAT=json`` (``nettailor serve`` reads it) writes one JSON object per line, for
the app's and uvicorn's messages alike, and replaces uvicorn's access log with one record per request:
request id, method, path, status, duration, client, the task id and, for predictions, the version that
answered and the server's timings.  Plain text (uvicorn's own format) stays the default.

Domain code adds to the current request's record with :func:`annotate` / :func:`note_result`;
outside a request both do nothing.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonFormatter", "RequestLogMiddleware", "annotate", "current_request_id", "note_result",
           "uvicorn_log_config"]

ACCESS_LOGGER = "nettailor.access"
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapes log at debug level
_SANE_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe in a header and a log line
_request: ContextVar[dict[str, Any] | None] = ContextVar("nettailor_request", default=None)
_access_log = logging.getLogger(ACCESS_LOGGER)


def current_request_id() -> str | None:
    fields = _request.get()
    return None if fields is None else fields["request_id"]


def annotate(**fields: Any) -> None:
    """Add ``fields`` to the current request's access record."""
    current = _request.get()
    if current is not None:
        current.update(fields)


def note_result(result: object) -> None:
    """The version(s) that answered and the server's timings, from a prediction response model."""
    if _request.get() is None:
        return
    version = getattr(result, "version", None)
    if version is None and isinstance(getattr(result, "results", None), dict):  # one image, several tasks
        version = {tid: p.version for tid, p in result.results.items()}  # type: ignore[attr-defined]
    timings = getattr(result, "timings_ms", None)
    annotate(version=version, timings_ms=timings.model_dump() if timings is not None else None)


def _task_of(scope: Scope) -> str | None:
    params = scope.get("path_params") or {}  # the router fills these into the scope it was handed
    for key in ("task_id", "model_name"):
        if key in params:
            return str(params[key])
    if scope.get("query_string"):
        tasks = parse_qs(scope["query_string"].decode("latin-1")).get("tasks")
        if tasks:
            return tasks[0]
    return None


class RequestLogMiddleware:
    """Pure ASGI (no per-request task or body buffering): request id in, request id out, access record."""

    def __init__(self, app: ASGIApp, access_log: bool = False) -> None:
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = incoming if _SANE_ID.fullmatch(incoming) else uuid.uuid4().hex
        fields: dict[str, Any] = {"request_id": rid}
        token = _request.set(fields)
        status = 500  # if the app fails before it answers
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                self._log(scope, fields, status, time.perf_counter() - t0)
            _request.reset(token)

    @staticmethod
    def _log(scope: Scope, fields: dict[str, Any], status: int, seconds: float) -> None:
        path = scope["path"]
        level = logging.DEBUG if path in _QUIET_PATHS and status < 500 else logging.INFO
        if not _access_log.isEnabledFor(level):
            return
        client = scope.get("client")
        record = {"method": scope["method"], "path": path, "status": status,
                  "duration_ms": round(seconds * 1000.0, 3), "client": client[0] if client else None,
                  "task": _task_of(scope), **fields}  # fields: the request id, and what the core noted
        _access_log.log(level, '"%s %s" %d', scope["method"], path, status,
                        extra={"fields": {k: v for k, v in record.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id (inside a request), extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = current_request_id()
        if rid is not None:
            out["request_id"] = rid
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def uvicorn_log_config(log_format: str, level: str) -> dict[str, Any]:
    """``uvicorn.run(log_config=...)``: uvicorn's own config for text, one JSON handler for everything else."""
    if log_format != "json":
        from uvicorn.config import LOGGING_CONFIG

        return LOGGING_CONFIG
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["json"], "level": lvl},
        "loggers": {  # uvicorn's loggers keep no handlers of their own: they reach the root's JSON handler
            "uvicorn": {"handlers": [], "level": lvl, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": lvl, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
