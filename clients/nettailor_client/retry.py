"""When and how long to wait before sending a request again.

Two layers.  Connections that cannot be opened (refused, reset while connecting, DNS hiccups) are
retried by httpx's own transport (``httpx.HTTPTransport(retries=connect)``, exponential backoff from
0.5 s): nothing was sent, so that is safe for every call.  Then overload answers are retried here:
``Overloaded`` (429, or 503 ``overloaded``) and a bare 503 with no error code (a load balancer or a
replica that is starting).  The server rejects those before doing
any work, so a retry is safe for every method.  A ``Retry-After`` header wins over the exponential
backoff; both are capped by ``max_delay`` so that a confused server cannot park a robot for an hour.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import APIError, Overloaded, Unavailable, parse_retry_after

__all__ = ["Retry"]


@dataclass(frozen=True)
class Retry:
    """``max_retries`` extra attempts after the first; 0 turns retrying off.

    Without ``Retry-After`` the n-th retry (n = 0, 1, ...) waits ``backoff * 2**n`` seconds, plus up to
    ``jitter`` of that again at random so that many robots do not come back in lock step.
    """

    max_retries: int = 3
    backoff: float = 0.25
    max_delay: float = 30.0
    jitter: float = 0.1
    connect: int = 3  # connection attempts retried by the httpx transport (0.5 s, 1 s, 2 s apart)

    def __post_init__(self) -> None:
        if min(self.max_retries, self.backoff, self.max_delay, self.jitter, self.connect) < 0:
            raise ValueError(f"Retry values must be >= 0: {self}")

    @classmethod
    def coerce(cls, value: Retry | int | None) -> Retry:
        if value is None:
            return cls()
        if isinstance(value, Retry):
            return value
        return cls(max_retries=int(value), connect=int(value))

    @staticmethod
    def should_retry(exc: APIError) -> bool:
        return isinstance(exc, Overloaded) or (type(exc) is Unavailable and exc.status == 503)

    def delay(self, attempt: int, exc: APIError) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based) after ``exc``."""
        retry_after: float | None = getattr(exc, "retry_after", None)
        if retry_after is None and exc.response is not None:
            retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        base = self.backoff * float(2**attempt)
        return min(base * (1.0 + self.jitter * random.random()), self.max_delay)
