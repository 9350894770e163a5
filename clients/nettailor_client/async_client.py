"""The asynchronous client: the same calls as :class:`~nettailor_client.Client`, awaited."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import anyio
import httpx

from . import _calls
from ._calls import Call, PackInput
from .errors import APIError, ServerError, TransportError, raise_for_response
from .images import ImageInput
from .models import Aliases, BatchPrediction, MultiPrediction, Prediction, Registered, TaskDetail, TaskSummary
from .retry import Retry
from .session import AsyncTaskSession

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """A NetTailor server, for asyncio or trio.  Arguments as for :class:`~nettailor_client.Client`;
    ``transport`` can be an ``httpx.ASGITransport`` wrapping the server app in-process."""

    def __init__(self, base_url: str | None = None, *, token: str | None = None,
                 timeout: float | httpx.Timeout | None = 10.0,
                 retries: Retry | int | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url, self.token = _calls.resolve(base_url, token)
        self.retry = Retry.coerce(retries)
        transport = transport or httpx.AsyncHTTPTransport(retries=self.retry.connect)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport,
                                       headers=_calls.client_headers(self.token, headers))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"

    async def _send(self, call: Call[T], retry: Retry | None = None) -> T:
        policy = retry or self.retry
        attempt = 0
        while True:
            try:
                response = await self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as e:
                raise _calls.transport_error(e, self.base_url) from e
            try:
                raise_for_response(response)
            except APIError as e:
                if attempt >= policy.max_retries or not Retry.should_retry(e):
                    raise
                await anyio.sleep(policy.delay(attempt, e))
                attempt += 1
                continue
            return call.parse(response)

    # inference
    async def predict(self, task_id: str, image: ImageInput, *, top_k: int = 5, next_task: str | None = None,
                      version: int | None = None, alias: str | None = None) -> Prediction:
        return await self._send(_calls.predict(task_id, image, top_k, next_task, version=version, alias=alias))

    async def predict_batch(self, task_id: str, images: Iterable[ImageInput], *, top_k: int = 5,
                            next_task: str | None = None, version: int | None = None,
                            alias: str | None = None) -> BatchPrediction:
        return await self._send(_calls.predict_batch(task_id, images, top_k, next_task, version=version,
                                                     alias=alias))

    async def predict_multi(self, image: ImageInput, tasks: str | Sequence[str], *, top_k: int = 5,
                            next_task: str | None = None, version: int | None = None,
                            alias: str | None = None) -> MultiPrediction:
        return await self._send(_calls.predict_multi(image, tasks, top_k, next_task, version=version,
                                                     alias=alias))

    async def prefetch(self, task_id: str) -> None:
        await self._send(_calls.prefetch(task_id))

    def task(self, task_id: str, *, version: int | None = None, alias: str | None = None) -> AsyncTaskSession:
        return AsyncTaskSession(self, task_id, version=version, alias=alias)

    # operators
    async def list_tasks(self) -> list[TaskSummary]:
        return await self._send(_calls.list_tasks())

    async def get_task(self, task_id: str) -> TaskDetail:
        return await self._send(_calls.get_task(task_id))

    async def register(self, task_id: str, pack: PackInput) -> Registered:
        return await self._send(_calls.register(task_id, pack))

    async def delete(self, task_id: str) -> None:
        await self._send(_calls.delete(task_id))

    async def rollback(self, task_id: str, version: int) -> Registered:
        return await self._send(_calls.rollback(task_id, version))

    async def set_alias(self, task_id: str, alias: str, version: int) -> Aliases:
        return await self._send(_calls.set_alias(task_id, alias, version))

    async def delete_alias(self, task_id: str, alias: str) -> None:
        await self._send(_calls.delete_alias(task_id, alias))

    async def health(self) -> dict[str, Any]:
        return await self._send(_calls.health())

    async def wait_ready(self, timeout: float = 30.0, *, interval: float = 0.25) -> dict[str, Any]:
        """The awaited twin of :meth:`Client.wait_ready`."""
        wait = _calls.ReadyWait(self.base_url, timeout, interval)
        while True:
            try:
                return await self._send(_calls.ready(), Retry(max_retries=0))
            except (TransportError, ServerError) as e:
                await anyio.sleep(wait.delay(e))
