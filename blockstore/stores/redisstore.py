"""RedisStore: the production store, shared by any number of server replicas.

Keys (``nt:`` is the default prefix; tests use their own)::

    nt:pack:<sha256>        immutable pack bytes (content-addressed)
    nt:task:<task_id>       hash: version, sha256, backbone_id, updated_at, history, aliases, alias_log (JSON)
    nt:tasks                set of task ids
    nt:backbone:<id>        backbone bytes
    nt:backbone-default     id of the default backbone
    nt:events               pub/sub channel: register, update, rollback, delete, alias and unalias events

Pack bytes are written before the transaction that points a task at them, and task changes are
MULTI/EXEC transactions under WATCH on the task key, so concurrent writers never lose a version
and readers never see a pointer to missing bytes.  Events are published inside the transaction.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..errors import PackNotFound, StoreUnavailable, TaskNotFound
from ..pack import PackInfo
from ..taskid import validate_task_id
from .base import (
    Store,
    StoreEvent,
    Subscription,
    TaskRecord,
    VersionRecord,
    alias_fields,
    next_record,
    rolled_back,
    sha256_hex,
)

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)


class RedisStore(Store):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str | None = None,
                 socket_timeout: float = 5.0, connect_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = prefix or query.pop("prefix", ["nt:"])[0]
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self.url = url
        # One immediate retry covers a pooled connection that went stale (Redis restarted); more,
        # with redis-py's default backoff, would stall every call for seconds during an outage.
        self._client = redis.Redis.from_url(clean, socket_timeout=socket_timeout,
                                            socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 1))

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise StoreUnavailable(f"redis at {self.url} is unreachable: {e}") from None
        except RedisError as e:
            raise StoreUnavailable(f"redis at {self.url} failed: {e}") from None

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def events_channel(self) -> str:
        return self._k("events")

    # -- backbones -------------------------------------------------------------------------

    def put_backbone(self, data: bytes, *, make_default: bool = True) -> str:
        bid = sha256_hex(data)
        with self._guard():
            self._client.set(self._k("backbone", bid), data, nx=True)
            if make_default:
                self._client.set(self._k("backbone-default"), bid)
        return bid

    def _get_backbone(self, backbone_id: str) -> bytes | None:
        with self._guard():
            return self._client.get(self._k("backbone", backbone_id))  # type: ignore[return-value]

    def default_backbone_id(self) -> str | None:
        with self._guard():
            v = self._client.get(self._k("backbone-default"))
        return v.decode() if v else None  # type: ignore[union-attr]

    # -- tasks -----------------------------------------------------------------------------

    @staticmethod
    def _record(task_id: str, h: dict[bytes, bytes]) -> TaskRecord | None:
        if not h:
            return None
        d = {k.decode(): v.decode() for k, v in h.items()}
        hist = tuple(VersionRecord(**x) for x in json.loads(d["history"]))
        extra = alias_fields({k: json.loads(d[k]) for k in ("aliases", "alias_log") if k in d})
        return TaskRecord(task_id, int(d["version"]), d["sha256"], d["backbone_id"], float(d["updated_at"]), hist,
                          *extra)

    @staticmethod
    def _mapping(rec: TaskRecord) -> dict[str, str]:
        d = rec.to_dict()
        return {
            "version": str(rec.version), "sha256": rec.sha256, "backbone_id": rec.backbone_id,
            "updated_at": repr(rec.updated_at), "history": json.dumps(d["history"]),
            "aliases": json.dumps(d["aliases"]), "alias_log": json.dumps(d["alias_log"]),
        }

    def _transact(self, task_id: str, change: Callable[[TaskRecord | None], tuple[TaskRecord | None, StoreEvent | None]]
                  ) -> TaskRecord | None:
        """Apply ``change`` to the task's record atomically (optimistic WATCH/MULTI/EXEC, retried)."""
        key = self._k("task", task_id)
        with self._guard(), self._client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    old = self._record(task_id, pipe.hgetall(key))  # type: ignore[arg-type]
                    new, event = change(old)
                    if event is None:
                        pipe.unwatch()
                        return new
                    pipe.multi()
                    if new is None:
                        pipe.delete(key)
                        pipe.srem(self._k("tasks"), task_id)
                    else:
                        pipe.delete(key)
                        pipe.hset(key, mapping=self._mapping(new))  # type: ignore[arg-type]
                        pipe.sadd(self._k("tasks"), task_id)
                    pipe.publish(self.events_channel, json.dumps(event.__dict__))
                    pipe.execute()
                    return new
                except WatchError:
                    continue

    def _register(self, task_id: str, pack: bytes, info: PackInfo) -> tuple[TaskRecord, bool]:
        with self._guard():
            self._client.set(self._k("pack", info.sha256), pack, nx=True)
        changed = False

        def change(old: TaskRecord | None) -> tuple[TaskRecord | None, StoreEvent | None]:
            nonlocal changed
            new = next_record(task_id, old, info)
            changed = new is not None
            if new is None:
                return old, None
            return new, StoreEvent("update" if old else "register", task_id, new.version, new.sha256)

        rec = self._transact(task_id, change)
        assert rec is not None
        return rec, changed

    def get_record(self, task_id: str) -> TaskRecord:
        validate_task_id(task_id)
        with self._guard():
            h = self._client.hgetall(self._k("task", task_id))
        rec = self._record(task_id, h)  # type: ignore[arg-type]
        if rec is None:
            raise TaskNotFound(f"task {task_id!r} is not registered")
        return rec

    def get_pack_bytes(self, sha256: str) -> bytes:
        with self._guard():
            data = self._client.get(self._k("pack", sha256))
        if data is None:
            raise PackNotFound(f"store {self.url} holds no pack {sha256[:12]}...")
        return data  # type: ignore[return-value]

    def list_tasks(self) -> list[str]:
        with self._guard():
            return sorted(m.decode() for m in self._client.smembers(self._k("tasks")))  # type: ignore[union-attr]

    def delete(self, task_id: str) -> None:
        validate_task_id(task_id)

        def change(old: TaskRecord | None) -> tuple[TaskRecord | None, StoreEvent | None]:
            if old is None:
                raise TaskNotFound(f"task {task_id!r} is not registered")
            return None, StoreEvent("delete", task_id)

        self._transact(task_id, change)

    def rollback(self, task_id: str, version: int) -> TaskRecord:
        validate_task_id(task_id)

        def change(old: TaskRecord | None) -> tuple[TaskRecord | None, StoreEvent | None]:
            if old is None:
                raise TaskNotFound(f"task {task_id!r} is not registered")
            new = rolled_back(old, version)
            return new, StoreEvent("rollback", task_id, new.version, new.sha256)

        rec = self._transact(task_id, change)
        assert rec is not None
        return rec

    def _change_record(self, task_id: str,
                       change: Callable[[TaskRecord], tuple[TaskRecord, StoreEvent] | None]) -> tuple[TaskRecord, bool]:
        changed = False

        def apply(old: TaskRecord | None) -> tuple[TaskRecord | None, StoreEvent | None]:
            nonlocal changed
            if old is None:
                raise TaskNotFound(f"task {task_id!r} is not registered")
            done = change(old)
            changed = done is not None
            return done if done is not None else (old, None)

        rec = self._transact(task_id, apply)
        assert rec is not None
        return rec, changed

    def ping(self) -> None:
        with self._guard():
            self._client.ping()

    def close(self) -> None:
        self._client.close()

    # -- events ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[StoreEvent], None]) -> Subscription:
        return _PubSubSubscription(self, callback)


class _PubSubSubscription(Subscription):
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

