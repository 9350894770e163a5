"""The pack cache's policy: which entry a full cache pushes out, and whether it keeps a newcomer.

Both read how often each task was asked for lately (:class:`Popularity`) per byte of its prepared
tensors.  A full cache pushes out the entry asked for least often per byte among the ``sample`` least
recently used (ties: the least recent), so a large, rarely asked task goes before a small, popular
one; with equal sizes and counts this is plain LRU.  It keeps a newly loaded task only if it was asked
for at least as often per byte as the first entry it would push out, as in TinyLFU, so a burst of rare
tasks does not flush the popular ones.  Under Zipf(1) over 1,000 tasks of 0.2-2.8 MB in 256 MiB
(bench/cache_policy_sim.py, the real cache), this kept more tasks and more hits than LRU with
admission alone: the figures are in the README.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Policy", "Popularity"]


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


class Policy:
    """Eviction and admission by popularity per byte; ``sample`` = 1 is LRU with admission."""

    def __init__(self, sample: int = 32, min_window: int = 1024) -> None:
        if sample < 1:
            raise ValueError(f"the eviction sample must be at least 1, not {sample}")
        self.sample = sample
        self.popularity = Popularity(min_window)

    def touch(self, key: str, entries: int) -> None:
        """Count a request for ``key`` (``entries``: how many the cache holds, which sets the window)."""
        self.popularity.touch(key, entries)

    def colder(self, a: str, a_bytes: int, b: str, b_bytes: int) -> bool:
        """Whether ``a`` was asked for less often per byte lately than ``b`` (ties: not colder)."""
        return self.popularity[a] * max(1, b_bytes) < self.popularity[b] * max(1, a_bytes)

    def victim(self, lru_first: Iterable[tuple[str, int]], keep: str) -> tuple[str, int] | None:
        """The ``(key, nbytes)`` to push out among the first ``sample`` of ``lru_first`` (least recently
        used first) other than ``keep``; None when there is no other."""
        best: tuple[str, int] | None = None
        seen = 0
        for key, nbytes in lru_first:
            if key == keep:
                continue
            if best is None or self.colder(key, nbytes, *best):
                best = (key, nbytes)
            seen += 1
            if seen >= self.sample:
                break
        return best
