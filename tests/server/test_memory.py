"""server.memory: freed heap pages go back to the OS after a pack goes away, at most once a second."""

from __future__ import annotations

import platform

import pytest

from server import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_heap_runs_and_is_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = memory._trim
    assert real is not None

    def counting(pad: int) -> int:
        calls.append(pad)
        return real(pad)

    monkeypatch.setattr(memory, "_trim", counting)
    monkeypatch.setattr(memory, "_last", float("-inf"))
    assert memory.trim_heap() is True  # the first call trims
    assert memory.trim_heap() is False  # within MIN_INTERVAL_S: skipped
    assert memory.trim_heap(force=True) is True
    assert calls == [0, 0]


def test_trim_heap_is_a_no_op_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_trim", None)
    assert memory.trim_heap(force=True) is False
