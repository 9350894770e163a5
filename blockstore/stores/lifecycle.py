"""The lifecycle of pack bytes: which versions a task keeps, and which bytes may be collected.

* **Retention**: a task keeps its last ``keep`` versions (by version number) for rollback, plus the
  version it currently points at and every version an alias names; registering a new version drops
  the older ones from its history.
* **Collection**: pack bytes that no task record names, in its current pointer or its history, are
  garbage.  Marking is deliberately conservative: every SHA-256 digest written anywhere in a task's
  stored record counts as referenced, so a record with fields this code does not know (aliases, a
  newer layout) or a damaged one never loses bytes it may point at.

How each store keeps a collection from racing a registration is in its module docstring.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import VersionRecord

__all__ = ["DEFAULT_KEEP_VERSIONS", "GcReport", "digests_in", "retained"]

DEFAULT_KEEP_VERSIONS = 10
_DIGEST = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def retained(history: Iterable[VersionRecord], keep: int,
             pinned: Iterable[int] = ()) -> tuple[VersionRecord, ...]:
    """The entries of ``history`` among the ``keep`` newest versions or ``pinned`` (the current version
    and any other version something points at), in their original order."""
    if keep < 1:
        raise ValueError(f"a task keeps at least one version, not {keep}")
    history = tuple(history)
    newest = sorted(h.version for h in history)[-keep:]
    kept = set(newest) | set(pinned)
    return tuple(h for h in history if h.version in kept)


def digests_in(raw: bytes) -> set[str]:
    """Every SHA-256 hex digest in a stored record's raw bytes (the conservative mark)."""
    return {m.decode() for m in _DIGEST.findall(raw)}


@dataclass(frozen=True)
class GcReport:
    """What one collection did (or, with ``dry_run``, would do)."""

    dry_run: bool
    tasks: int  # task records seen
    versions_pruned: int  # history entries dropped by the retention policy
    packs_kept: int  # pack blobs still referenced
    packs_deleted: tuple[str, ...]  # digests of the blobs collected
    bytes_freed: int
    temp_files_removed: int = 0  # left-overs of writes that died midway (DirStore)

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "tasks": self.tasks, "versions_pruned": self.versions_pruned,
                "packs_kept": self.packs_kept, "packs_deleted": list(self.packs_deleted),
                "bytes_freed": self.bytes_freed, "temp_files_removed": self.temp_files_removed}
