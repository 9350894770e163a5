"""Graceful drain: on SIGTERM, report not-ready first, keep serving for a while, then shut down.

A load balancer (a Kubernetes Service, nginx) keeps sending requests to a replica until it notices
that the replica is going away.  uvicorn alone, on SIGTERM, closes its listening socket at once, so a
request sent in that window is refused.  ``nettailor serve`` runs :class:`DrainingServer` instead:

1. SIGTERM: :class:`Drain` turns on.  ``/readyz`` answers 503 ``draining``, so the balancer takes the
   replica out of rotation; every other request is still served, with ``Connection: close`` so that
   clients' pooled connections move to other replicas.
2. After ``NETTAILOR_DRAIN_S`` seconds (0: at once): uvicorn's own graceful shutdown.  The listener
   closes, requests in flight finish, the lifespan releases the executor and the store, and the
   process exits with status 0.

A second SIGTERM, or SIGINT (Ctrl-C) at any time, skips the drain and shuts down at once (gracefully:
requests in flight still finish; a second Ctrl-C forces).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import Readiness

__all__ = ["Drain", "DrainMiddleware", "DrainingServer"]

log = logging.getLogger(__name__)

_DRAINING_BODY = Readiness(status="draining", detail="shutting down: finishing requests in flight").model_dump_json(
).encode()


class Drain:
    """Whether this app is draining (set once, from the signal handler)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    @property
    def draining(self) -> bool:
        return self._event.is_set()

    def begin(self) -> None:
        self._event.set()


class DrainMiddleware:
    """While draining: ``/readyz`` is 503 before any route runs, and every response closes its connection."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.draining:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/readyz":
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                    (b"content-length", str(len(_DRAINING_BODY)).encode())]})
            await send({"type": "http.response.body", "body": _DRAINING_BODY})
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain of ``seconds`` between SIGTERM and its graceful shutdown."""

    def __init__(self, config: uvicorn.Config, drain: Drain, seconds: float) -> None:
        super().__init__(config)
        self.drain, self.seconds = drain, seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain.draining or self.should_exit:
            super().handle_exit(sig, frame)  # Ctrl-C, or a second SIGTERM: uvicorn's own shutdown, now
            return
        self.drain.begin()
        if self.seconds <= 0:
            self._drained()
            return
        log.info("SIGTERM: /readyz reports draining; serving %.1f s more, then finishing requests in flight",
                 self.seconds)
        timer = threading.Timer(self.seconds, self._drained)
        timer.daemon = True
        timer.start()

    def _drained(self) -> None:
        log.info("drain period over: closing the listener")
        # Not super().handle_exit: it would re-raise SIGTERM once uvicorn has shut down, and a drained
        # server has finished its work: it exits with status 0.
        self.should_exit = True
