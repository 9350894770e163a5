"""Robot sessions: a current task that the caller switches, over the client's keep-alive connection.

::

    with client.task("door-state") as t:
        t.predict(frame)
        t.hint_next("person-count")     # the server may prefetch that pack while we move
        t.switch("person-count")
        t.predict(frame)
        print(t.last.latency_ms, t.last.switched)

    with client.task("door-state", alias="production") as t:   # a mission on the version operators
        t.predict(frame)                                      # call production when it starts ...

A session can pin a stored ``version`` of its task, or an ``alias``: every call of the mission then
names it, so an operator who registers a new version meanwhile does not change the robot's answers
(``switch()`` sets the pin for the next task, none by default).  With an alias, the version follows
the alias, and each record says which version answered.

A session never opens connections of its own: every call goes through its client's pool, so a robot
that runs tasks one after another keeps one TCP connection alive.  When that connection drops (the
server restarts, a cable is pulled) the session waits up to ``reconnect_timeout`` seconds for the
server to be ready again (``wait_ready``) and sends the prediction once more, which is safe because a
prediction changes nothing; ``reconnects`` counts how often that happened.  Each call is recorded (wall-clock
latency as seen by the robot, whether it followed a switch, and the server's own total), in a bounded
history, so that switch latency can be watched on a robot that runs for days.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ServerUnreachable, Timeout
from .images import ImageInput
from .models import Prediction

if TYPE_CHECKING:
    from .async_client import AsyncClient
    from .client import Client

__all__ = ["AsyncTaskSession", "CallRecord", "TaskSession"]


@dataclass(frozen=True)
class CallRecord:
    task_id: str
    latency_ms: float
    switched: bool
    server_ms: float
    hinted: str | None = None
    version: int | None = None  # the store version that answered


class _SessionState:
    def __init__(self, task_id: str, history: int, reconnect_timeout: float | None,
                 version: int | None = None, alias: str | None = None) -> None:
        self.task_id = task_id
        self.reconnect_timeout = reconnect_timeout  # None or 0: a dropped connection raises at once
        self.reconnects = 0
        self.pin: dict[str, Any] = {}
        self._pin(version, alias)
        self.records: deque[CallRecord] = deque(maxlen=history)
        self._switched = True  # the first call is a switch onto this task
        self._hint: str | None = None

    @property
    def last(self) -> CallRecord | None:
        return self.records[-1] if self.records else None

    def _pin(self, version: int | None, alias: str | None) -> None:
        if version is not None and alias is not None:
            raise ValueError("pin a version or an alias, not both")
        self.pin = {"version": version, "alias": alias}

    def _switch(self, task_id: str, version: int | None = None, alias: str | None = None) -> None:
        self._pin(version, alias)
        if task_id != self.task_id:
            self.task_id = task_id
            self._switched = True

    def _take_hint(self) -> str | None:
        hint, self._hint = self._hint, None
        return hint

    def _record(self, started: float, result: Prediction, hint: str | None) -> None:
        latency = (time.perf_counter() - started) * 1000.0
        self.records.append(CallRecord(self.task_id, latency, self._switched, result.timings_ms.total, hint,
                                       result.version))
        self._switched = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.task_id!r})"


class TaskSession(_SessionState):
    """Created by :meth:`Client.task`; pins a current task for :meth:`predict`."""

    def __init__(self, client: Client, task_id: str, history: int = 1024,
                 reconnect_timeout: float | None = 30.0, *, version: int | None = None,
                 alias: str | None = None) -> None:
        super().__init__(task_id, history, reconnect_timeout, version, alias)
        self.client = client

    def __enter__(self) -> TaskSession:
        return self

    def __exit__(self, *exc: object) -> None:
        """Leaving the block ends the session, not the client: its connection stays open for the next one."""

    def switch(self, task_id: str, *, version: int | None = None, alias: str | None = None) -> TaskSession:
        """Make ``task_id`` the current task, pinned to ``version`` or ``alias`` if given; the next call is
        recorded as a switch."""
        self._switch(task_id, version, alias)
        return self

    def hint_next(self, task_id: str, *, prefetch: bool = False) -> None:
        """Tell the server which task comes next: as a header on the next request, or at once (``prefetch``)."""
        if prefetch:
            self.client.prefetch(task_id)
        else:
            self._hint = task_id

    def predict(self, image: ImageInput, *, top_k: int = 5) -> Prediction:
        hint = self._take_hint()
        started = time.perf_counter()
        try:
            result = self.client.predict(self.task_id, image, top_k=top_k, next_task=hint, **self.pin)
        except ServerUnreachable as e:
            if not self.reconnect_timeout:
                raise
            try:
                self.client.wait_ready(self.reconnect_timeout)
            except Timeout:
                raise e from None  # still unreachable: the drop is the error worth reporting
            self.reconnects += 1
            result = self.client.predict(self.task_id, image, top_k=top_k, next_task=hint, **self.pin)
        self._record(started, result, hint)
        return result


class AsyncTaskSession(_SessionState):
    """Created by :meth:`AsyncClient.task`; the awaited twin of :class:`TaskSession`."""

    def __init__(self, client: AsyncClient, task_id: str, history: int = 1024,
                 reconnect_timeout: float | None = 30.0, *, version: int | None = None,
                 alias: str | None = None) -> None:
        super().__init__(task_id, history, reconnect_timeout, version, alias)
        self.client = client

    async def __aenter__(self) -> AsyncTaskSession:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

    def switch(self, task_id: str, *, version: int | None = None, alias: str | None = None) -> AsyncTaskSession:
        self._switch(task_id, version, alias)
        return self

    async def hint_next(self, task_id: str, *, prefetch: bool = False) -> None:
        if prefetch:
            await self.client.prefetch(task_id)
        else:
            self._hint = task_id

    async def predict(self, image: ImageInput, *, top_k: int = 5) -> Prediction:
        hint = self._take_hint()
        started = time.perf_counter()
        try:
            result = await self.client.predict(self.task_id, image, top_k=top_k, next_task=hint, **self.pin)
        except ServerUnreachable as e:
            if not self.reconnect_timeout:
                raise
            try:
                await self.client.wait_ready(self.reconnect_timeout)
            except Timeout:
                raise e from None  # still unreachable: the drop is the error worth reporting
            self.reconnects += 1
            result = await self.client.predict(self.task_id, image, top_k=top_k, next_task=hint, **self.pin)
        self._record(started, result, hint)
        return result
