"""Stores for backbones and task packs: RedisStore (production) and DirStore (embedded default)."""

from __future__ import annotations

import os

from .base import ALIAS_EVENTS, AliasChange, Store, StoreEvent, Subscription, TaskRecord, VersionRecord
from .dirstore import DirStore
from .redisstore import RedisStore

__all__ = [
    "ALIAS_EVENTS",
    "DEFAULT_STORE",
    "AliasChange",
    "DirStore",
    "RedisStore",
    "Store",
    "StoreEvent",
    "Subscription",
    "TaskRecord",
    "VersionRecord",
    "open_store",
]

DEFAULT_STORE = ".nettailor/store"


def open_store(url: str | None = None) -> Store:
    """``redis://...`` (or ``rediss://``, ``unix://``) opens a RedisStore; anything else is a directory.
    ``None`` reads ``NETTAILOR_STORE`` and falls back to ``./.nettailor/store``."""
    url = url or os.environ.get("NETTAILOR_STORE") or DEFAULT_STORE
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    return DirStore(url)
