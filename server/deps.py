"""Dependencies: the resources the lifespan created, injected into routes as ``Annotated`` aliases.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, a
thread-pool hop (a queue put, a thread's wake-up, a call back into the event loop) per dependency
and request.  A prediction used two, about 15% of the event loop's busy samples (py-spy, N = 20,
C = 32).  None of them blocks."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import Forbidden, NotReady, Unauthorized
from .inference import Inference
from .metrics import Metrics
from .settings import Settings
from .tasks import TaskManager

__all__ = ["InferenceDep", "MetricsDep", "SettingsDep", "TasksDep", "require_operator"]


def _ready(request: Request, name: str):  # type: ignore[no-untyped-def]
    """A runtime object, or 503 not_ready while the server waits for a backbone (server/runtime.py)."""
    state = request.app.state
    if getattr(state, "backbone", None) is None:
        raise NotReady(f"the server is not ready: {getattr(state, 'not_ready', None) or 'starting'}")
    return getattr(state, name)


async def _inference(request: Request) -> Inference:
    return _ready(request, "inference")


async def _tasks(request: Request) -> TaskManager:
    return _ready(request, "tasks")


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(_settings)]
InferenceDep = Annotated[Inference, Depends(_inference)]
TasksDep = Annotated[TaskManager, Depends(_tasks)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]

_bearer = HTTPBearer(auto_error=False, description="the operator token (NETTAILOR_TOKEN)")


def _remote_is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else None
    try:
        return host is None or ipaddress.ip_address(host).is_loopback
    except ValueError:  # not an IP (in-process test clients, unix sockets)
        return True


async def require_operator(request: Request, settings: SettingsDep,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 without a bearer token, 403 with a wrong one; the comparison takes constant time."""
    if not settings.token:
        # Open mode (allowed on loopback only, checked at start-up); refuse remote callers anyway.
        if not _remote_is_loopback(request):
            raise Forbidden("the management API runs without a token and accepts loopback callers only")
        return
    if credentials is None or not credentials.credentials:
        raise Unauthorized("this call needs the operator token: Authorization: Bearer <NETTAILOR_TOKEN>")
    if not hmac.compare_digest(credentials.credentials.encode(), settings.token.encode()):
        raise Forbidden("the operator token is wrong")
