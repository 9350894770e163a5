"""RedisStore: the production store, shared by any number of server replicas.

Keys (``nt:`` is the default prefix; tests use their own)::

    nt:pack:<sha256>        immutable pack bytes (content-addressed)
    nt:packs                set of the digests of every stored pack (what a collection sweeps)
    nt:corrupt              hash: digest -> why those bytes failed their digest check
    nt:task:<task_id>       hash: version, sha256, backbone_id, updated_at, history, aliases, alias_log (JSON)
    nt:tasks                set of task ids
    nt:backbone:<id>        backbone bytes
    nt:backbone-default     id of the default backbone
    nt:events               pub/sub channel: register, update, rollback, delete, alias, unalias, corrupt and
                            repair events

Task changes are MULTI/EXEC transactions under WATCH, retried a bounded number of times
(``max_attempts``, with jittered backoff) before they fail with StoreUnavailable; events are published
inside the transaction.  A reply of the wrong type (WRONGTYPE) or a task hash of the wrong shape is a
CorruptRecord, never a crash.

**Collection never races a registration.**  A registration writes its pack bytes *inside* the
transaction that points the task at them, and WATCHes the pack key: if the bytes were there when it
looked, and a collection deletes them before EXEC, the transaction aborts and is retried (and then
writes the bytes).  A collection is one Lua script, which Redis runs atomically: it marks every digest
named by any task record and deletes the unmarked packs in one step, so no registration can commit
between its mark and its sweep.  Hence no record ever names missing bytes.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..backbone import validate_backbone_bytes
from ..errors import CorruptRecord, StoreUnavailable, TaskNotFound
from ..pack import PackInfo
from ..taskid import validate_task_id
from .base import Store, Subscription, sha256_hex
from .lifecycle import DEFAULT_KEEP_VERSIONS, GcReport
from .records import StoreEvent, TaskRecord, next_record, pruned, rolled_back
from .redis_events import PubSubSubscription
from .redis_lua import SWEEP

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")



class RedisStore(Store):
    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str | None = None,
                 socket_timeout: float = 5.0, connect_timeout: float = 1.0,
                 keep_versions: int = DEFAULT_KEEP_VERSIONS, max_attempts: int = 50) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        in_url = query.pop("prefix", [None])[0]  # never passed on to redis-py, which refuses it
        self.prefix = prefix or in_url or "nt:"
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        self.url = url
        self.socket_timeout, self.connect_timeout = socket_timeout, connect_timeout
        self.keep_versions = keep_versions
        self.max_attempts = max_attempts
        # One immediate retry covers a pooled connection that went stale (Redis restarted); more,
        # with redis-py's default backoff, would stall every call for seconds during an outage.
        self._client = redis.Redis.from_url(clean, socket_timeout=socket_timeout,
                                            socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 1))
        self._sweep_script = self._client.register_script(SWEEP)

    def __reduce__(self) -> tuple:
        """Pickled as how to open it again: another process (the executor's) gets its own connection."""
        return functools.partial(RedisStore, prefix=self.prefix, socket_timeout=self.socket_timeout,
                                 connect_timeout=self.connect_timeout, keep_versions=self.keep_versions,
                                 max_attempts=self.max_attempts), (self.url,)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise StoreUnavailable(f"redis at {self.url} is unreachable: {e}") from None
        except ResponseError as e:
            if str(e).startswith("WRONGTYPE"):
                raise CorruptRecord(f"redis at {self.url} holds a key of an unexpected type ({e}); another tool "
                                    "wrote it: delete that key or the task") from None
            raise StoreUnavailable(f"redis at {self.url} refused a command: {e}") from None
        except RedisError as e:
            raise StoreUnavailable(f"redis at {self.url} failed: {e}") from None

    def _atomic(self, what: str, attempt: Callable[[Pipeline], T]) -> T:
        """Run ``attempt`` (WATCH ... MULTI ... EXEC on the pipeline) until it commits, at most
        ``max_attempts`` times, backing off with jitter between conflicts."""
        with self._guard(), self._client.pipeline() as pipe:
            for n in range(self.max_attempts):
                try:
                    return attempt(pipe)
                except WatchError:
                    pipe.reset()
                    time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**n)))
        raise StoreUnavailable(f"{what} kept conflicting with concurrent writers ({self.max_attempts} attempts); "
                               "try again")

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def events_channel(self) -> str:
        return self._k("events")

    # -- backbones -------------------------------------------------------------------------

    def put_backbone(self, data: bytes, *, make_default: bool = True) -> str:
        validate_backbone_bytes(data)
        bid = sha256_hex(data)
        with self._guard():
            self._client.set(self._k("backbone", bid), data)  # same id, same bytes: rewriting repairs a rotten copy
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

    def list_backbones(self) -> list[str]:
        start = len(self._k("backbone", ""))
        with self._guard():
            keys = self._client.scan_iter(match=self._k("backbone", "*"), count=1000)
            return sorted(k.decode()[start:] for k in keys)  # type: ignore[union-attr]

    # -- tasks -----------------------------------------------------------------------------

    @staticmethod
    def _record(task_id: str, h: dict[bytes, bytes]) -> TaskRecord | None:
        if not h:
            return None
        try:
            d = {k.decode(): v.decode() for k, v in h.items()}
            # history, aliases and alias_log are JSON; records written before aliases have none
            parsed = {k: json.loads(d[k]) for k in ("history", "aliases", "alias_log") if k in d}
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise CorruptRecord(f"the stored record of task {task_id!r} is malformed ({type(e).__name__}: {e}); "
                                "delete the task to clear it") from None
        return TaskRecord.from_dict({**d, **parsed, "task_id": task_id})

    @staticmethod
    def _mapping(rec: TaskRecord) -> dict[str, str]:
        d = rec.to_dict()
        return {
            "version": str(rec.version), "sha256": rec.sha256, "backbone_id": rec.backbone_id,
            "updated_at": repr(rec.updated_at), "history": json.dumps(d["history"]),
            "aliases": json.dumps(d["aliases"]), "alias_log": json.dumps(d["alias_log"]),
        }

    def _put_record(self, pipe: Pipeline, rec: TaskRecord) -> None:
        key = self._k("task", rec.task_id)
        pipe.delete(key)
        pipe.hset(key, mapping=self._mapping(rec))  # type: ignore[arg-type]
        pipe.sadd(self._k("tasks"), rec.task_id)

    def _publish(self, pipe: Pipeline, event: StoreEvent) -> None:
        pipe.publish(self.events_channel, json.dumps(event.__dict__))

    def _register(self, task_id: str, pack: bytes, info: PackInfo) -> tuple[TaskRecord, bool]:
        key, pkey, corrupt = self._k("task", task_id), self._k("pack", info.sha256), self._k("corrupt")

        def attempt(pipe: Pipeline) -> tuple[TaskRecord | None, TaskRecord | None]:
            pipe.watch(key, pkey, corrupt)
            old = self._record(task_id, pipe.hgetall(key))  # type: ignore[arg-type]
            marked = bool(pipe.hexists(corrupt, info.sha256))
            write = marked or not pipe.exists(pkey)
            new = next_record(task_id, old, info, self.keep_versions)
            if new is None and not write:
                pipe.unwatch()
                return old, None
            pipe.multi()
            if write:  # inside the transaction: a collection cannot slip between the bytes and the record
                pipe.set(pkey, pack)
                pipe.sadd(self._k("packs"), info.sha256)
                pipe.hdel(corrupt, info.sha256)
            if new is not None:
                self._put_record(pipe, new)
                self._publish(pipe, StoreEvent("update" if old else "register", task_id, new.version, new.sha256))
            elif marked and old is not None:
                self._publish(pipe, StoreEvent("repair", task_id, old.version, old.sha256))
            pipe.execute()
            return old, new

        old, new = self._atomic(f"registering task {task_id!r}", attempt)
        if new is None:
            assert old is not None
            return old, False
        if old is not None:
            self._collect_quietly(set(old.referenced() - new.referenced()))
        return new, True

    def get_record(self, task_id: str) -> TaskRecord:
        validate_task_id(task_id)
        with self._guard():
            h = self._client.hgetall(self._k("task", task_id))
        rec = self._record(task_id, h)  # type: ignore[arg-type]
        if rec is None:
            raise TaskNotFound(f"task {task_id!r} is not registered")
        return rec

    def _pack_state(self, sha256: str) -> tuple[bool, str | None]:
        with self._guard():
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(self._k("pack", sha256))
            pipe.hget(self._k("corrupt"), sha256)
            present, mark = pipe.execute()
        return bool(present), (mark.decode(errors="replace") if mark is not None else None)

    def _read_pack(self, sha256: str) -> tuple[bytes | None, str | None]:
        with self._guard():
            pipe = self._client.pipeline(transaction=False)  # one round trip for both
            pipe.get(self._k("pack", sha256))
            pipe.hget(self._k("corrupt"), sha256)
            data, mark = pipe.execute()
        return data, (mark.decode(errors="replace") if mark is not None else None)

    def _mark_corrupt(self, sha256: str, detail: str, task_id: str) -> None:
        pkey = self._k("pack", sha256)

        def attempt(pipe: Pipeline) -> None:
            pipe.watch(pkey)  # a repair or a collection rewrites or deletes it: then there is nothing to mark
            data = pipe.get(pkey)
            if data is None or sha256_hex(data) == sha256:  # type: ignore[arg-type]
                pipe.unwatch()
                return
            pipe.multi()
            pipe.hset(self._k("corrupt"), sha256, detail)
            self._publish(pipe, StoreEvent("corrupt", task_id, None, sha256))
            pipe.execute()

        self._atomic(f"marking pack {sha256[:12]}... corrupt", attempt)

    def corrupt_digests(self) -> dict[str, str]:
        with self._guard():
            h = self._client.hgetall(self._k("corrupt"))
        return {k.decode(): v.decode(errors="replace") for k, v in h.items()}  # type: ignore[union-attr]

    def list_tasks(self) -> list[str]:
        with self._guard():
            return sorted(m.decode() for m in self._client.smembers(self._k("tasks")))  # type: ignore[union-attr]

    def delete(self, task_id: str) -> None:
        validate_task_id(task_id)
        key = self._k("task", task_id)

        def attempt(pipe: Pipeline) -> set[str] | None:
            pipe.watch(key)
            if not pipe.exists(key) and not pipe.sismember(self._k("tasks"), task_id):
                raise TaskNotFound(f"task {task_id!r} is not registered")
            try:  # a malformed record is deleted all the same: deleting is how an operator clears it
                old = self._record(task_id, pipe.hgetall(key))  # type: ignore[arg-type]
            except (CorruptRecord, ResponseError):
                old = None
            pipe.multi()
            pipe.delete(key)
            pipe.srem(self._k("tasks"), task_id)
            self._publish(pipe, StoreEvent("delete", task_id))
            pipe.execute()
            return set(old.referenced()) if old is not None else None

        dropped = self._atomic(f"deleting task {task_id!r}", attempt)
        self._collect_quietly(dropped)  # None (a malformed record): a full sweep

    def rollback(self, task_id: str, version: int) -> TaskRecord:
        validate_task_id(task_id)
        key = self._k("task", task_id)

        def attempt(pipe: Pipeline) -> TaskRecord:
            pipe.watch(key)
            old = self._record(task_id, pipe.hgetall(key))  # type: ignore[arg-type]
            if old is None:
                raise TaskNotFound(f"task {task_id!r} is not registered")
            new = rolled_back(old, version)
            pipe.multi()
            self._put_record(pipe, new)
            self._publish(pipe, StoreEvent("rollback", task_id, new.version, new.sha256))
            pipe.execute()
            return new

        return self._atomic(f"rolling back task {task_id!r}", attempt)

    # -- lifecycle -------------------------------------------------------------------------

    def _prune(self, task_id: str) -> int:
        key = self._k("task", task_id)

        def attempt(pipe: Pipeline) -> int:
            pipe.watch(key)
            old = self._record(task_id, pipe.hgetall(key))  # type: ignore[arg-type]
            new = pruned(old, self.keep_versions) if old is not None else None
            if old is None or new is None:
                pipe.unwatch()
                return 0
            pipe.multi()
            self._put_record(pipe, new)
            pipe.execute()
            return len(old.history) - len(new.history)

        return self._atomic(f"pruning task {task_id!r}", attempt)

    def _pack_sizes(self) -> dict[str, int]:
        self._index_packs()
        with self._guard():
            digests = sorted(m.decode() for m in self._client.smembers(self._k("packs")))  # type: ignore[union-attr]
            pipe = self._client.pipeline(transaction=False)
            for d in digests:
                pipe.strlen(self._k("pack", d))
            sizes = pipe.execute(raise_on_error=False)
        return {d: n for d, n in zip(digests, sizes) if isinstance(n, int) and n > 0}

    def _index_packs(self) -> None:
        """Add pack keys written before the ``packs`` index existed (or by hand) to it."""
        start = len(self._k("pack", ""))
        with self._guard():
            found = [k.decode()[start:] for k in self._client.scan_iter(match=self._k("pack", "*"), count=1000)]
            if found:
                self._client.sadd(self._k("packs"), *found)

    def _sweep(self, candidates: set[str] | None, *, dry_run: bool) -> GcReport:
        if candidates is None:
            self._index_packs()
        args = [self.prefix, "1" if dry_run else "0", *sorted(candidates or ())]
        with self._guard():
            out = self._sweep_script(args=args)
        ntasks, kept, rest = int(out[0]), int(out[1]), out[2:]
        gone = tuple(d.decode() for d in rest[0::2])
        return GcReport(dry_run, ntasks, 0, kept, gone, sum(int(n) for n in rest[1::2]))

    def _change_record(self, task_id: str,
                       change: Callable[[TaskRecord], tuple[TaskRecord, StoreEvent] | None]) -> tuple[TaskRecord, bool]:
        validate_task_id(task_id)
        key = self._k("task", task_id)

        def attempt(pipe: Pipeline) -> tuple[TaskRecord, bool]:
            pipe.watch(key)
            old = self._record(task_id, pipe.hgetall(key))  # type: ignore[arg-type]
            if old is None:
                raise TaskNotFound(f"task {task_id!r} is not registered")
            done = change(old)
            if done is None:
                pipe.unwatch()
                return old, False
            new, event = done
            pipe.multi()
            self._put_record(pipe, new)
            self._publish(pipe, event)
            pipe.execute()
            return new, True

        return self._atomic(f"changing task {task_id!r}", attempt)

    def ping(self) -> None:
        with self._guard():
            self._client.ping()

    def close(self) -> None:
        self._client.close()

    # -- events ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[StoreEvent], None]) -> Subscription:
        return PubSubSubscription(self, callback)
