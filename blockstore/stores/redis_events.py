"""The Redis event stream: a subscription thread on the store's pub/sub channel."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .base import Subscription
from .records import StoreEvent

if TYPE_CHECKING:
    from .redisstore import RedisStore

__all__ = ["PubSubSubscription"]

log = logging.getLogger(__name__)


class PubSubSubscription(Subscription):
    """Listens on the events channel; after a lost connection it reconnects and sends a ``resync``
    event, since events published meanwhile are gone and caches must not trust what they hold."""

    def __init__(self, store: RedisStore, callback: Callable[[StoreEvent], None]) -> None:
        super().__init__(callback, "redis-events")
        self._store = store
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(timeout=5)

    def _run(self) -> None:
        lost = False
        while not self._stop.is_set():
            try:
                ps = self._store._client.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(self._store.events_channel)
                self._ready.set()
                if lost:
                    self._deliver(StoreEvent("resync", "*"))
                    lost = False
                while not self._stop.is_set():
                    msg = ps.get_message(timeout=0.5)
                    if msg and msg.get("type") == "message":
                        try:
                            self._deliver(StoreEvent(**json.loads(msg["data"])))
                        except (ValueError, TypeError):
                            log.warning("ignoring malformed event %r", msg["data"])
                ps.close()
            except RedisError as e:
                if not lost:
                    log.warning("lost the redis event stream (%s); reconnecting", e)
                lost = True
                self._ready.set()
                self._stop.wait(1.0)
