"""The synchronous client: one keep-alive connection pool, typed answers, typed errors, retries."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import httpx

from . import _calls
from ._calls import Call, PackInput
from .errors import APIError, ServerError, TransportError, raise_for_response
from .images import ImageInput
from .models import Aliases, BatchPrediction, MultiPrediction, Prediction, Registered, TaskDetail, TaskSummary
from .retry import Retry
from .session import TaskSession

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A NetTailor server, synchronously.

    ``base_url`` defaults to ``$NETTAILOR_URL`` (else ``http://127.0.0.1:8000``) and ``token`` to
    ``$NETTAILOR_TOKEN``; the token is only needed for register, delete and rollback.  ``retries`` is
    a :class:`Retry` or a number of retries for overload answers.  ``transport`` lets tests and
    embedders run the client over any httpx transport (an in-process WSGI app, a mock).
    """

    def __init__(self, base_url: str | None = None, *, token: str | None = None,
                 timeout: float | httpx.Timeout | None = 10.0,
                 retries: Retry | int | None = None, transport: httpx.BaseTransport | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url, self.token = _calls.resolve(base_url, token)
        self.retry = Retry.coerce(retries)
        transport = transport or httpx.HTTPTransport(retries=self.retry.connect)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers=_calls.client_headers(self.token, headers))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    def _send(self, call: Call[T], retry: Retry | None = None) -> T:
        policy = retry or self.retry
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as e:
                raise _calls.transport_error(e, self.base_url) from e
            try:
                raise_for_response(response)
            except APIError as e:
                if attempt >= policy.max_retries or not Retry.should_retry(e):
                    raise
                time.sleep(policy.delay(attempt, e))
                attempt += 1
                continue
            return call.parse(response)

    # inference
    def predict(self, task_id: str, image: ImageInput, *, top_k: int = 5, next_task: str | None = None,
                version: int | None = None, alias: str | None = None) -> Prediction:
        """Classify one image with one task.  ``next_task`` hints the server to prefetch that task's pack.
        ``version`` (a store version) or ``alias`` (``"production"``) picks the version that answers;
        by default the task's current one."""
        return self._send(_calls.predict(task_id, image, top_k, next_task, version=version, alias=alias))

    def predict_batch(self, task_id: str, images: Iterable[ImageInput], *, top_k: int = 5,
                      next_task: str | None = None, version: int | None = None,
                      alias: str | None = None) -> BatchPrediction:
        """Classify several images with one task, in one request (at most the server's max_batch)."""
        return self._send(_calls.predict_batch(task_id, images, top_k, next_task, version=version, alias=alias))

    def predict_multi(self, image: ImageInput, tasks: str | Sequence[str], *, top_k: int = 5,
                      next_task: str | None = None, version: int | None = None,
                      alias: str | None = None) -> MultiPrediction:
        """Run several tasks on one image (``tasks``: a list or ``"a,b,c"``); a version or alias applies to each."""
        return self._send(_calls.predict_multi(image, tasks, top_k, next_task, version=version, alias=alias))

    def prefetch(self, task_id: str) -> None:
        """Ask the server to warm its cache with this task's pack now."""
        self._send(_calls.prefetch(task_id))

    def task(self, task_id: str, *, version: int | None = None, alias: str | None = None) -> TaskSession:
        """A robot's session pinned to ``task_id`` (and, for a mission, to a ``version`` or an ``alias``
        of it); use it as a context manager or keep it around."""
        return TaskSession(self, task_id, version=version, alias=alias)

    # operators
    def list_tasks(self) -> list[TaskSummary]:
        return self._send(_calls.list_tasks())

    def get_task(self, task_id: str) -> TaskDetail:
        return self._send(_calls.get_task(task_id))

    def register(self, task_id: str, pack: PackInput) -> Registered:
        """Register or update a task from a pack file path, bytes or binary file object (needs the token)."""
        return self._send(_calls.register(task_id, pack))

    def delete(self, task_id: str) -> None:
        self._send(_calls.delete(task_id))

    def rollback(self, task_id: str, version: int) -> Registered:
        """Re-point the task at an earlier store version (an int from ``get_task(...).history``)."""
        return self._send(_calls.rollback(task_id, version))

    def set_alias(self, task_id: str, alias: str, version: int) -> Aliases:
        """Point ``alias`` (``production``, ``canary``, ...) at a stored version of the task (needs the token)."""
        return self._send(_calls.set_alias(task_id, alias, version))

    def delete_alias(self, task_id: str, alias: str) -> None:
        self._send(_calls.delete_alias(task_id, alias))

    def health(self) -> dict[str, Any]:
        """``/healthz``: succeeds while the server process lives."""
        return self._send(_calls.health())

    def wait_ready(self, timeout: float = 30.0, *, interval: float = 0.25) -> dict[str, Any]:
        """Poll ``/readyz`` until the server is ready (backbone loaded, store reachable) and return its
        answer; raise :class:`~nettailor_client.Timeout` after ``timeout`` seconds.  A server that is not
        listening yet, or answers 503 while it starts, is polled again every ``interval`` seconds."""
        wait = _calls.ReadyWait(self.base_url, timeout, interval)
        while True:
            try:
                return self._send(_calls.ready(), Retry(max_retries=0))
            except (TransportError, ServerError) as e:
                time.sleep(wait.delay(e))
