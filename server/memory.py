"""Giving freed heap memory back to the operating system after a task's pack goes away.

A pack passes through the server as megabyte-sized buffers (the upload, the store's reply, the parsed
tensors, the folded ones).  glibc's malloc raises its mmap threshold after the first such buffer is
freed, so later ones come from the heap arenas; when they are freed, the pages stay mapped, and
small long-lived objects allocated in between pin them.  Over 400 rounds of register, predict and
delete, that left the server's RSS growing by 1.6 KB per round (tests/faults/test_rounds.py).

Two fixes were measured on the 2-core machine:

* a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_=131072``): RSS growth 0.5 KB per round, but every
  executor activation then becomes a fresh mmap with its page faults, and the executor's rate fell
  to 0.55x (bench/executor_bench.py --quick --threads 1, side by side);
* ``malloc_trim(0)`` when a pack has gone (a task deleted or replaced), at most once per
  ``MIN_INTERVAL_S``: it returns every free page of every arena with ``madvise``, off the hot path.

This module does the second.  Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import threading
import time

__all__ = ["MIN_INTERVAL_S", "trim_heap"]

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 1.0  # churn of many deletes trims once per interval, not once per delete


def _load_trim():  # type: ignore[no-untyped-def]
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - a glibc without malloc_trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_trim = _load_trim()
_lock = threading.Lock()
_last = float("-inf")


def trim_heap(*, force: bool = False) -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``); True when it ran.

    Rate-limited to once per :data:`MIN_INTERVAL_S` unless ``force``; thread-safe; a no-op off glibc."""
    global _last
    if _trim is None:
        return False
    now = time.monotonic()
    with _lock:
        if not force and now - _last < MIN_INTERVAL_S:
            return False
        _last = now
    t0 = time.perf_counter()
    _trim(0)
    log.debug("malloc_trim took %.1f ms", (time.perf_counter() - t0) * 1000)
    return True
