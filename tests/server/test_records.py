"""The record table (server.records): what a replica remembers of each task's record and of the store's
corrupt marks, kept fresh by store events.  Over DirStore and the real Redis."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest

from blockstore import StoreEvent, TaskNotFound
from server.records import RecordTable


def _counted(monkeypatch, store, *names: str) -> Counter:  # type: ignore[no-untyped-def]
    calls: Counter = Counter()
    for name in names:
        real = getattr(type(store), name)

        def wrapper(self, *a, _real=real, _name=name, **k):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(type(store), name, wrapper)
    return calls


def test_a_record_is_read_once_until_an_event_of_its_task(any_store, make_pack, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    calls = _counted(monkeypatch, any_store, "get_record")
    table = RecordTable(any_store)
    assert table.get("t1") == table.get("t1") == rec and calls["get_record"] == 1
    table.on_event(StoreEvent("update", "other", 1, "0" * 64))  # another task's event
    table.on_event(StoreEvent("corrupt", "t1", None, rec.sha256))  # a mark, not a record change
    table.get("t1")
    assert calls["get_record"] == 1
    new, _ = any_store.register("t1", make_pack("t1", seed=1, version="2").to_bytes())
    assert table.get("t1") == rec  # the event is not here yet: the table still answers the old record
    table.on_event(StoreEvent("update", "t1", new.version, new.sha256))
    assert table.get("t1") == new and calls["get_record"] == 2
    table.on_event(StoreEvent("resync", "*"))  # events were lost: nothing read before is trusted
    assert table.get("t1") == new and calls["get_record"] == 3
    with pytest.raises(TaskNotFound):
        table.get("nobody")
    assert list(table._records) == ["t1"] and table._readers == {}


def test_the_table_is_bounded_least_recently_used_first(any_store, make_pack) -> None:  # type: ignore[no-untyped-def]
    for i in range(4):
        any_store.register(f"t{i}", make_pack(f"t{i}", seed=i).to_bytes())
    table = RecordTable(any_store, size=2)
    for tid in ("t0", "t1", "t0", "t2", "t3"):
        table.get(tid)
    assert list(table._records) == ["t2", "t3"]
    any_store.set_alias("t2", "prod", 1)
    table.forget("t2")
    table.get("t2")
    table.get("t3")
    assert asyncio.run(table.resolve("t2", "prod")) == 1  # an alias's read is a use too
    table.get("t0")
    assert list(table._records) == ["t2", "t0"]


def test_corrupt_marks_are_read_once_and_kept_by_events(any_store, make_pack, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    calls = _counted(monkeypatch, any_store, "corrupt_digests")
    table = RecordTable(any_store)
    assert table.unmarked(rec.sha256) and table.unmarked(rec.sha256) and calls["corrupt_digests"] == 1
    table.on_event(StoreEvent("corrupt", "*", None, rec.sha256))
    assert not table.unmarked(rec.sha256) and table.unmarked("f" * 64)
    table.on_event(StoreEvent("repair", "t1", 1, rec.sha256))
    assert table.unmarked(rec.sha256) and calls["corrupt_digests"] == 1
    table.on_event(StoreEvent("resync", "*"))  # a resync reads the marks again
    assert table.unmarked(rec.sha256) and calls["corrupt_digests"] == 2


def test_a_read_of_the_marks_that_an_event_raced_is_not_kept(any_store, make_pack, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    table = RecordTable(any_store)
    real = type(any_store).corrupt_digests
    started, release = threading.Event(), threading.Event()

    def slow(self):  # type: ignore[no-untyped-def]
        out = real(self)  # read before the mark
        started.set()
        release.wait(10)
        return out

    monkeypatch.setattr(type(any_store), "corrupt_digests", slow)
    answers: list[bool] = []
    reader = threading.Thread(target=lambda: answers.append(table.unmarked(rec.sha256)))
    reader.start()
    assert started.wait(10)
    table.on_event(StoreEvent("corrupt", "t1", None, rec.sha256))  # marked during the read
    release.set()
    reader.join(10)
    assert answers == [True] and table._corrupt is None  # that read answers, but is not remembered
    monkeypatch.setattr(type(any_store), "corrupt_digests", lambda self: {rec.sha256: "bad"})
    assert not table.unmarked(rec.sha256)
