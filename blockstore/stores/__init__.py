"""Stores for backbones and task packs: RedisStore (production) and DirStore (embedded default)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StoreConfigError
from .base import Store, Subscription
from .dirstore import DirStore
from .lifecycle import DEFAULT_KEEP_VERSIONS, GcReport
from .records import ALIAS_EVENTS, AliasChange, StoreEvent, TaskRecord, VersionRecord
from .redisstore import RedisStore

__all__ = [
    "ALIAS_EVENTS",
    "DEFAULT_KEEP_VERSIONS",
    "DEFAULT_STORE",
    "AliasChange",
    "DirStore",
    "GcReport",
    "RedisStore",
    "Store",
    "StoreEvent",
    "Subscription",
    "TaskRecord",
    "VersionRecord",
    "open_store",
    "save_backbone",
]

DEFAULT_STORE = ".nettailor/store"


def open_store(url: str | None = None, *, keep_versions: int | None = None) -> Store:
    """``redis://...`` (or ``rediss://``, ``unix://``) opens a RedisStore; anything else is a directory.
    ``None`` reads ``NETTAILOR_STORE`` and falls back to ``./.nettailor/store``.

    ``keep_versions`` (None: ``NETTAILOR_KEEP_VERSIONS``, else 10) is how many versions of each task
    the store keeps for rollback."""
    url = url or os.environ.get("NETTAILOR_STORE") or DEFAULT_STORE
    if keep_versions is None:
        raw = os.environ.get("NETTAILOR_KEEP_VERSIONS") or str(DEFAULT_KEEP_VERSIONS)
        if not raw.isdigit() or int(raw) < 1:
            raise StoreConfigError(f"NETTAILOR_KEEP_VERSIONS must be a whole number of versions >= 1, not {raw!r}")
        keep_versions = int(raw)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, keep_versions=keep_versions)
    return DirStore(url, keep_versions=keep_versions)


def save_backbone(blob: bytes, store_url: str | None, *, make_default: bool,
                  out: Path | None = None) -> tuple[str, bool, str]:
    """Write backbone ``blob`` to ``out`` (when given) and into the store at ``store_url``.
    Returns its id, whether it is now the store's default, and the store's URL."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
    store = open_store(store_url)
    try:
        bid = store.put_backbone(blob, make_default=make_default)
        return bid, store.default_backbone_id() == bid, store.url
    finally:
        store.close()
