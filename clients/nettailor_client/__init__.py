"""A light SDK and CLI for a NetTailor server: httpx and pydantic, never torch.

::

    from nettailor_client import Client

    with Client("http://127.0.0.1:8000") as client:
        print(client.predict("digits", "seven.png").top.label)
        with client.task("door-state") as t:
            t.predict(frame)

Errors are typed; see :mod:`nettailor_client.errors` for the tree.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .async_client import AsyncClient
from .client import Client
from .errors import (
    AliasNotFound,
    APIError,
    AuthError,
    BackboneMismatch,
    BadImage,
    ClientError,
    CorruptPack,
    Forbidden,
    ImageEncodingError,
    ImageError,
    ImageTooLarge,
    InvalidRequest,
    InvalidTaskId,
    NetTailorError,
    NotFound,
    Overloaded,
    PackError,
    PackTaskMismatch,
    PayloadTooLarge,
    ServerError,
    ServerUnreachable,
    StoreUnavailable,
    TaskNotFound,
    TaskUnavailable,
    Timeout,
    TransportError,
    Unauthorized,
    Unavailable,
    UnexpectedResponse,
    UnsupportedFormat,
    UnsupportedMediaType,
    VersionNotFound,
)
from .models import (
    AliasChange,
    Aliases,
    BatchPrediction,
    HistoryEntry,
    Label,
    MultiPrediction,
    Prediction,
    Registered,
    TaskDetail,
    TaskSummary,
    Timings,
)
from .retry import Retry
from .session import AsyncTaskSession, CallRecord, TaskSession

__all__ = [
    "APIError", "AliasChange", "AliasNotFound", "Aliases",
    "AsyncClient", "AsyncTaskSession", "AuthError", "BackboneMismatch", "BadImage", "BatchPrediction",
    "CallRecord", "Client", "ClientError", "CorruptPack", "Forbidden", "HistoryEntry", "ImageEncodingError",
    "ImageError", "ImageTooLarge", "InvalidRequest", "InvalidTaskId", "Label", "MultiPrediction", "NetTailorError",
    "NotFound", "Overloaded", "PackError", "PackTaskMismatch", "PayloadTooLarge", "Prediction", "Registered",
    "Retry", "ServerError", "ServerUnreachable", "StoreUnavailable", "TaskDetail", "TaskNotFound", "TaskSession",
    "TaskSummary", "TaskUnavailable", "Timeout", "Timings", "TransportError", "Unauthorized", "Unavailable",
    "UnexpectedResponse", "UnsupportedFormat", "UnsupportedMediaType", "VersionNotFound", "__version__",
]
