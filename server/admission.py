"""What the pack cache's admission check reads: how often each task was asked for lately.

A full cache keeps a newly loaded task only if it was asked for at least as often lately as the
entry it would push out (:meth:`server.cache.PackCache._evict`), as in TinyLFU, so a burst of rare
tasks does not flush the popular ones.
"""

from __future__ import annotations

__all__ = ["Popularity"]


class Popularity:
    """How often each key was asked for lately (TinyLFU's frequency, counted exactly and aged): after
    every ``10 x entries`` requests (at least ``min_window``), every count halves and zeros are
    forgotten, so it holds about the keys of the last window, not every id ever seen."""

    def __init__(self, min_window: int = 1024) -> None:
        self.min_window = min_window
        self._counts: dict[str, int] = {}
        self._seen = 0

    def touch(self, key: str, entries: int) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
        self._seen += 1
        if self._seen >= max(self.min_window, 10 * entries):
            self._seen = 0
            self._counts = {k: c // 2 for k, c in self._counts.items() if c > 1}

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)
