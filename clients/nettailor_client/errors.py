"""The exceptions the SDK raises, and the one place that maps a server answer onto them.

The tree::

    NetTailorError                    base of everything this package raises on purpose
    ├── ImageEncodingError            an image the SDK cannot turn into upload bytes (client side)
    ├── UnexpectedResponse            a success answer that does not match the documented schema
    ├── TransportError                no HTTP answer at all: the CLI exits 4
    │   ├── ServerUnreachable         connection refused, DNS failure, reset
    │   └── Timeout                   connect, read or write timeout
    └── APIError                      the server answered 4xx/5xx: ``status``, ``code``, ``detail``
        ├── ClientError               4xx
        │   ├── InvalidRequest        422 validation_error (malformed query or JSON body)
        │   ├── InvalidTaskId         422 invalid_task_id
        │   ├── AuthError
        │   │   ├── Unauthorized      401 unauthorized (no token)
        │   │   └── Forbidden         403 forbidden (wrong token)
        │   ├── NotFound              404 with an unknown code
        │   │   ├── TaskNotFound      404 task_not_found
        │   │   ├── VersionNotFound   404 version_not_found
        │   │   └── AliasNotFound     404 alias_not_found
        │   ├── ImageError            the upload is not a servable image
        │   │   ├── UnsupportedMediaType  415 unsupported_media_type
        │   │   ├── BadImage          422 bad_image (truncated, undecodable)
        │   │   ├── PayloadTooLarge   413 payload_too_large (byte limit)
        │   │   └── ImageTooLarge     413 image_too_large (pixel limit)
        │   └── PackError             registering bad pack bytes
        │       ├── BackboneMismatch  409 backbone_mismatch
        │       ├── CorruptPack       422 corrupt_pack
        │       ├── UnsupportedFormat 422 unsupported_format
        │       └── PackTaskMismatch  422 pack_task_mismatch
        ├── ServerError               5xx
        │   └── Unavailable           503 with no code (a load balancer) or not_ready (a replica
        │       │                     waiting for a backbone)
        │       ├── TaskUnavailable   503 task_unavailable (that task's stored pack is corrupt) or
        │       │                     corrupt_record (its stored record is malformed)
        │       └── StoreUnavailable  503 store_unavailable
        └── Overloaded                429 or 503 overloaded: the queue is full; ``retry_after`` in
                                      seconds or None.  The clients retry it (and a bare 503) with
                                      backoff before raising it; see ``nettailor_client.retry``.

``raise_for_response`` picks the class by the server's ``error`` code first and falls back on the
HTTP status, so an unknown code from a newer server (or a proxy's HTML 502) still lands on a useful
base class.
"""

from __future__ import annotations

import email.utils
import time

import httpx

__all__ = [
    "APIError", "AliasNotFound", "AuthError", "BackboneMismatch", "BadImage", "ClientError", "CorruptPack", "Forbidden",
    "ImageEncodingError", "ImageError", "ImageTooLarge", "InvalidRequest", "InvalidTaskId", "NetTailorError",
    "NotFound", "Overloaded", "PackError", "PackTaskMismatch", "PayloadTooLarge", "ServerError",
    "ServerUnreachable", "StoreUnavailable", "TaskNotFound", "TaskUnavailable", "Timeout", "TransportError",
    "UnexpectedResponse", "Unauthorized", "Unavailable", "UnsupportedFormat", "UnsupportedMediaType", "VersionNotFound",
    "parse_retry_after", "raise_for_response",
]


class NetTailorError(Exception):
    """Base of every error the SDK raises on purpose."""


class ImageEncodingError(NetTailorError, TypeError):
    """The SDK cannot turn the given object into image bytes (wrong type, dtype, shape, no Pillow)."""


class UnexpectedResponse(NetTailorError):
    """The server said 2xx, but its body is not what docs/http-api.md promises."""


class TransportError(NetTailorError):
    """No HTTP answer came back."""


class ServerUnreachable(TransportError):
    pass


class Timeout(TransportError):
    pass


class APIError(NetTailorError):
    """The server answered with an error status."""

    def __init__(self, status: int, code: str | None, detail: str, response: httpx.Response | None = None) -> None:
        super().__init__(f"{code or 'http_error'} ({status}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.response = response


class ClientError(APIError):
    pass


class InvalidRequest(ClientError):
    pass


class InvalidTaskId(ClientError):
    pass


class AuthError(ClientError):
    pass


class Unauthorized(AuthError):
    pass


class Forbidden(AuthError):
    pass


class NotFound(ClientError):
    pass


class TaskNotFound(NotFound):
    pass


class VersionNotFound(NotFound):
    pass


class AliasNotFound(NotFound):
    pass


class ImageError(ClientError):
    pass


class UnsupportedMediaType(ImageError):
    pass


class BadImage(ImageError):
    pass


class PayloadTooLarge(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass


class PackError(ClientError):
    pass


class BackboneMismatch(PackError):
    pass


class CorruptPack(PackError):
    pass


class UnsupportedFormat(PackError):
    pass


class PackTaskMismatch(PackError):
    pass


class ServerError(APIError):
    pass


class Unavailable(ServerError):
    pass


class TaskUnavailable(Unavailable):
    pass


class StoreUnavailable(Unavailable):
    pass


class Overloaded(APIError):
    def __init__(self, status: int, code: str | None, detail: str, response: httpx.Response | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(status, code, detail, response)
        self.retry_after = retry_after


_BY_CODE: dict[str, type[APIError]] = {
    "validation_error": InvalidRequest,
    "invalid_task_id": InvalidTaskId,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "task_not_found": TaskNotFound,
    "version_not_found": VersionNotFound,
    "alias_not_found": AliasNotFound,
    "invalid_alias": InvalidRequest,
    "unsupported_media_type": UnsupportedMediaType,
    "bad_image": BadImage,
    "payload_too_large": PayloadTooLarge,
    "image_too_large": ImageTooLarge,
    "backbone_mismatch": BackboneMismatch,
    "corrupt_pack": CorruptPack,
    "unsupported_format": UnsupportedFormat,
    "pack_task_mismatch": PackTaskMismatch,
    "task_unavailable": TaskUnavailable,
    "corrupt_record": TaskUnavailable,  # that task's stored record is damaged: the task cannot be served
    "store_unavailable": StoreUnavailable,
    "not_ready": Unavailable,
    "overloaded": Overloaded,
}

_BY_STATUS: dict[int, type[APIError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 413: PayloadTooLarge, 415: UnsupportedMediaType,
    422: InvalidRequest, 429: Overloaded, 503: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (fractions tolerated) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_body(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        code = body.get("error")
        detail = body.get("detail")
        if not isinstance(detail, str):
            detail = response.reason_phrase if detail is None else str(detail)
        return (code if isinstance(code, str) else None), detail
    return None, str(body)[:500]


def error_class(status: int, code: str | None) -> type[APIError]:
    cls = _BY_CODE.get(code or "")
    if cls is None:
        cls = _BY_STATUS.get(status, ServerError if status >= 500 else ClientError)
    return cls


def raise_for_response(response: httpx.Response) -> None:
    """Raise the typed exception for an error answer; do nothing for 1xx-3xx."""
    if response.status_code < 400:
        return
    code, detail = _error_body(response)
    cls = error_class(response.status_code, code)
    if cls is Overloaded:
        raise Overloaded(response.status_code, code, detail, response,
                         retry_after=parse_retry_after(response.headers.get("Retry-After")))
    raise cls(response.status_code, code, detail, response)
