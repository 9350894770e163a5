"""Which stored version answers a request: the task's current one, a pinned version, or an alias's.

A request names at most one of ``version`` and ``alias`` (a :class:`Pin`).  A stored version never
changes while its task exists, so a pinned version is cached under its own key (``task@3``) beside
the current entry and the two never evict or confuse each other.  An alias is resolved through this
replica's :class:`server.records.RecordTable`: the task's record as read on first use, dropped on every
store event of the task, so every replica follows an alias move as soon as the event reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockstore import validate_alias

from .cache import Lease, PackCache
from .errors import RequestError
from .records import pinned_key

__all__ = ["CURRENT", "ConflictingPin", "Pin", "acquire"]


class ConflictingPin(RequestError):
    code = "validation_error"


@dataclass(frozen=True)
class Pin:
    """``version``: a store version (1, 2, ...); ``alias``: a named pointer to one; neither: the current."""

    version: int | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        if self.version is not None and self.alias is not None:
            raise ConflictingPin("name a version or an alias, not both")
        if self.version is not None and (isinstance(self.version, bool) or int(self.version) < 1):
            raise ConflictingPin(f"version must be a positive integer, not {self.version!r}")
        if self.alias is not None:
            validate_alias(self.alias)

    @classmethod
    def parse(cls, version_or_alias: str) -> Pin:
        """The Open Inference Protocol's ``/versions/{v}`` segment: digits are a version, else an alias."""
        if version_or_alias.isdecimal():
            return cls(version=int(version_or_alias))
        return cls(alias=version_or_alias)

    @property
    def is_current(self) -> bool:
        return self.version is None and self.alias is None


CURRENT = Pin()


async def acquire(cache: PackCache, task_id: str, pin: Pin) -> Lease:
    """A lease on the version ``pin`` names; the current entry serves it when it is that version."""
    version = pin.version
    if pin.alias is not None:
        version = await cache.records.resolve(task_id, pin.alias)
    if version is None:
        return await cache.acquire(task_id)
    cur = cache.cached_version(task_id)
    if cur is not None and cur[0] == version:
        lease = cache.try_lease(task_id)
        if lease is not None and lease.task.version == version:
            return lease
        if lease is not None:
            lease.release()
    return await cache.acquire(pinned_key(task_id, version))
