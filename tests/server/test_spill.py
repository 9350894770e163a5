"""server.spill: a folded task kept on local disk comes back bit for bit, only while the store still
vouches for its digest, within its byte budget, and never as a reason to fail a load."""

from __future__ import annotations

import functools
import logging
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from blockstore import PackNotFound, StoreEvent, StoreUnavailable
from server.cache import PackCache
from server.engine import ProcessExecutor
from server.errors import TaskUnavailable
from server.executor import Executor, PreparedTask
from server.loading import LoadFailure, load_stored
from server.metrics import Metrics
from server.spill import PrivateDir, SpillTier
from tests.conftest import flip_stored_byte
from tests.server.test_executor import _build, _inputs

CPU = torch.device("cpu")


@pytest.fixture
def spill(tmp_path):  # type: ignore[no-untyped-def]
    tier = SpillTier(1 << 30, tmp_path / "spill")
    yield tier
    tier.close()


@pytest.mark.parametrize("case", ["resnet10-basic", "resnet10-bottleneck-proxies"])
def test_a_spilled_task_computes_exactly_what_it_was_folded_into(case, spill) -> None:
    """Plans with dropped blocks, dead nodes, frozen and per-task BN, basic and bottleneck proxies."""
    bb, tasks, _ = _build(case)
    ex, xs = Executor(bb), _inputs(4)
    for t in tasks:
        spill.save(bb.backbone_id, t)
        back = spill.load(bb.backbone_id, t.sha256, version=7, uid=123, device=CPU)
        assert back is not None and (back.uid, back.version, back.nbytes) == (123, 7, t.nbytes)
        assert (back.task_id, back.labels, back.plan, back.preprocess) == (t.task_id, t.labels, t.plan, t.preprocess)
        assert len(back.tensors()) == len(t.tensors())
        assert all(torch.equal(a, b) for a, b in zip(back.tensors(), t.tensors()))
        want = ex.run([(t, x) for x in xs])
        got = ex.run([(back, x) for x in xs])
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert spill.hits == spill.writes == len(tasks)


def test_the_directory_is_private_and_goes_with_close(tmp_path, make_pack, backbone) -> None:  # type: ignore[no-untyped-def]
    tier = SpillTier(1 << 26, tmp_path)
    assert tier.dir.parent == tmp_path and stat.S_IMODE(tier.dir.stat().st_mode) == 0o700
    task = PreparedTask.from_pack(make_pack("t1"), backbone, version=1)
    tier.save(backbone.backbone_id, task)
    back = tier.load(backbone.backbone_id, task.sha256, version=1, uid=None, device=CPU)
    assert back is not None and back.uid != task.uid
    tier.close()
    assert not tier.dir.exists() and len(tier) == 0
    assert all(torch.equal(a, b) for a, b in zip(back.tensors(), task.tensors()))  # still mapped
    with pytest.raises(ValueError, match="positive budget"):
        SpillTier(0)


def test_the_budget_drops_the_least_recently_used_files(tmp_path, make_pack, backbone) -> None:  # type: ignore[no-untyped-def]
    tasks = [PreparedTask.from_pack(make_pack(f"t{i}", seed=i), backbone, version=1) for i in range(3)]
    probe = SpillTier(1 << 30, tmp_path)
    probe.save(backbone.backbone_id, tasks[0])
    size = probe.nbytes
    probe.close()
    tier = SpillTier(2 * size + size // 2, tmp_path)  # room for two
    bid = backbone.backbone_id
    tier.save(bid, tasks[0])
    tier.save(bid, tasks[1])
    assert tier.load(bid, tasks[0].sha256, version=1, uid=None, device=CPU) is not None  # t0 used: t1 is older
    tier.save(bid, tasks[2])
    assert len(tier) == 2 and tier.nbytes <= tier.budget
    assert (bid, tasks[1].sha256) not in tier and tier.load(bid, tasks[1].sha256, version=1, uid=None,
                                                            device=CPU) is None
    assert sorted(p.name for p in tier.dir.glob("*.nts")) == sorted(
        SpillTier._name(bid, t.sha256) for t in (tasks[0], tasks[2]))
    tier.close()


def test_a_reload_maps_the_file_instead_of_fetching(any_store, backbone, make_pack, spill, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    first = load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)
    spill.flush()  # written by the tier's writer thread
    assert spill.writes == 1 and spill.hits == 0

    def no_fetch(*a: object, **k: object) -> bytes:
        raise AssertionError("fetched from the store")

    monkeypatch.setattr(type(any_store), "get_pack_bytes", no_fetch)
    monkeypatch.setattr(type(any_store), "use_pack_bytes", no_fetch)
    again = load_stored(any_store, backbone, "t1", rec.version, rec.sha256, uid=99, spill=spill)
    assert spill.hits == 1 and again.uid == 99 and again.spilled and not first.spilled
    assert all(torch.equal(a, b) for a, b in zip(again.tensors(), first.tensors()))


def test_the_store_still_decides(any_store, backbone, make_pack, spill) -> None:  # type: ignore[no-untyped-def]
    """A digest marked corrupt, or collected, is refused as a fetch would refuse it, copy or no copy."""
    data = make_pack("t1").to_bytes()
    rec, _ = any_store.register("t1", data)
    load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)
    flip_stored_byte(any_store, rec.sha256, len(data) - 3)
    with pytest.raises(LoadFailure, match="hash to"):  # the first read marks the digest
        load_stored(any_store, backbone, "t1", rec.version, rec.sha256)
    with pytest.raises(LoadFailure, match="marked corrupt") as e:
        load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)
    assert e.value.integrity and spill.hits == 0
    any_store.register("t1", data)  # the repair clears the mark: the copy is good again
    assert load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill).task_id == "t1"
    assert spill.hits == 1
    any_store.delete("t1")
    any_store.collect_garbage()  # bytes no version references go
    with pytest.raises(PackNotFound):
        any_store.check_pack(rec.sha256)
    with pytest.raises(LoadFailure) as e:
        load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)
    assert e.value.gone


def test_a_damaged_file_is_dropped_and_the_store_answers(any_store, backbone, make_pack, spill, caplog) -> None:  # type: ignore[no-untyped-def]
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    want = load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)
    spill.flush()
    path = spill.dir / SpillTier._name(backbone.backbone_id, rec.sha256)
    os.truncate(path, path.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="server.spill"):
        got = load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)
    spill.flush()
    assert "cannot be read back" in caplog.text and spill.hits == 0
    assert all(torch.equal(a, b) for a, b in zip(got.tensors(), want.tensors()))
    assert path.stat().st_size > 0 and (backbone.backbone_id, rec.sha256) in spill  # written again, whole
    path.write_bytes(b"not a spill file at all, but long enough" * 4)
    assert spill.load(backbone.backbone_id, rec.sha256, version=1, uid=None, device=CPU) is None
    assert not path.exists() and len(spill) == 0


def test_a_full_disk_is_logged_not_raised(backbone, make_pack, spill, caplog) -> None:  # type: ignore[no-untyped-def]
    task = PreparedTask.from_pack(make_pack("t1"), backbone, version=1)
    spill.dir.chmod(0o500)  # no writes (as root, which ignores modes, the save simply succeeds)
    try:
        with caplog.at_level(logging.WARNING, logger="server.spill"):
            spill.save(backbone.backbone_id, task)
    finally:
        spill.dir.chmod(0o700)
    assert (len(spill) == 0 and "cannot spill" in caplog.text) or (len(spill) == 1 and os.geteuid() == 0)


def test_the_executor_process_spills_and_a_new_child_starts_empty(store, backbone, make_pack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec, _ = store.register("t1", make_pack("t1").to_bytes())
    ex = ProcessExecutor(backbone, store=store, spill_bytes=1 << 30, spill_dir=str(tmp_path / "spill"))
    (root,) = list((tmp_path / "spill").iterdir())

    def files() -> list[Path]:
        return list(root.rglob("*.nts"))

    try:
        desc = ex.load("t1", 1, rec.sha256)
        for _ in range(3000):  # written by the child's writer thread, after the load returned
            if files():
                break
            time.sleep(0.01)
        assert len(files()) == 1
        (row,) = ex.run_frames([(torch.randn(3, 32, 32), [desc])])
        os.kill(ex.pid, signal.SIGKILL)  # type: ignore[arg-type]
        (again,) = ex.run_frames([(torch.randn(3, 32, 32), [desc])])  # reloaded by the new child
        assert ex.restarts == 1 and row[0].shape == again[0].shape
        assert len(files()) == 1 and len([p for p in root.iterdir() if p.is_dir()]) == 1  # the dead child's is gone
    finally:
        ex.close()
    assert not root.exists()


def test_the_cache_counts_loads_by_source(store, backbone, make_pack, spill) -> None:  # type: ignore[no-untyped-def]
    """An evicted task comes back from the spill tier, and /metrics says so."""
    for i in range(2):
        store.register(f"t{i}", make_pack(f"t{i}", seed=i).to_bytes())
    one = PreparedTask.from_pack(make_pack("t0"), backbone, version=1).nbytes
    metrics = Metrics()
    cache = PackCache(store, backbone, one + one // 2, metrics,  # room for one task
                      prepare=functools.partial(load_stored, store, backbone, spill=spill))
    try:
        for tid in ("t0", "t1", "t0", "t1"):
            with cache.lease(tid) as lease:
                assert lease.task.task_id == tid
    finally:
        cache.close()
    text = metrics.render().decode()
    assert 'nettailor_pack_load_seconds_count{source="store"} 2.0' in text
    assert 'nettailor_pack_load_seconds_count{source="spill"} 2.0' in text


def test_a_miss_asks_the_store_only_what_its_events_have_not_said(any_store, backbone, make_pack, spill,  # type: ignore[no-untyped-def]
                                                                  monkeypatch) -> None:
    """A task that comes back from the spill tier costs no store round trip: the cache's record table
    answers its record, and the table's corrupt marks vouch for its digest.  An update's event makes the
    next miss read the record again; once a corrupt event arrives, the store is asked and refuses."""
    recs = [any_store.register(f"t{i}", make_pack(f"t{i}", seed=i).to_bytes())[0] for i in range(2)]
    calls: dict[str, int] = {"get_record": 0, "check_pack": 0}
    for name in calls:
        real = getattr(type(any_store), name)

        def counted(self, *a, _real=real, _name=name):  # type: ignore[no-untyped-def]
            calls[_name] += 1
            return _real(self, *a)

        monkeypatch.setattr(type(any_store), name, counted)
    one = PreparedTask.from_pack(make_pack("t0"), backbone, version=1).nbytes
    cache = PackCache(any_store, backbone, one + one // 2, Metrics(),  # room for one task
                      prepare=functools.partial(load_stored, any_store, backbone, spill=spill))
    try:
        for tid in ("t0", "t1", "t0", "t1"):
            with cache.lease(tid) as lease:
                assert lease.task.task_id == tid
        assert spill.hits == 2 and calls == {"get_record": 2, "check_pack": 0}
        new, _ = any_store.register("t0", make_pack("t0", seed=5, version="2").to_bytes())
        cache.on_event(StoreEvent("update", "t0", new.version, new.sha256))
        with cache.lease("t0") as lease:
            assert lease.task.version == new.version and lease.task.sha256 == new.sha256
        assert calls["get_record"] == 3
        flip_stored_byte(any_store, recs[1].sha256, 10)
        with pytest.raises(LoadFailure, match="hash to"):  # another replica's read marks the digest
            load_stored(any_store, backbone, "t1", recs[1].version, recs[1].sha256)
        cache.on_event(StoreEvent("corrupt", "t1", None, recs[1].sha256))
        with pytest.raises(TaskUnavailable, match="marked corrupt"):  # the spilled copy is not used
            cache.lease("t1")
        assert calls["check_pack"] == 1 and spill.hits == 2
    finally:
        cache.close()


def test_a_spilled_task_read_before_serves_through_a_store_outage(any_store, backbone, make_pack, spill,  # type: ignore[no-untyped-def]
                                                                  monkeypatch) -> None:
    """With its record and the marks known from events, a task in the spill tier needs nothing from the
    store: it comes back while the store is down.  One that was never spilled fails as before (503)."""
    for i in range(3):
        any_store.register(f"t{i}", make_pack(f"t{i}", seed=i).to_bytes())
    one = PreparedTask.from_pack(make_pack("t0"), backbone, version=1).nbytes
    cache = PackCache(any_store, backbone, one + one // 2, Metrics(),  # room for one task
                      prepare=functools.partial(load_stored, any_store, backbone, spill=spill))
    try:
        for tid in ("t0", "t1"):
            cache.lease(tid).release()
        cache.records.get("t2")  # its record was read, but it was never loaded: no spilled copy

        def down(self, *a, **k):  # type: ignore[no-untyped-def]
            raise StoreUnavailable("the store is down")

        for name in ("get_record", "check_pack", "corrupt_digests", "use_pack_bytes", "get_pack_bytes"):
            monkeypatch.setattr(type(any_store), name, down)
        with cache.lease("t0") as lease:
            assert lease.task.task_id == "t0" and lease.task.spilled
        with pytest.raises(StoreUnavailable):
            cache.lease("t2")
    finally:
        cache.close()


def test_a_directory_left_by_a_dead_owner_is_swept_by_the_next(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    alive, dead = PrivateDir(tmp_path), PrivateDir(tmp_path)
    (dead.path / "x.nts").write_bytes(b"abc")
    os.close(dead._fd)  # type: ignore[arg-type]  # its owner dies: the lock goes with it, the files stay
    dead._fd = None
    other = tmp_path / "not-a-spill-dir"
    other.mkdir()
    with caplog.at_level(logging.WARNING, logger="server.spill"):
        new = PrivateDir(tmp_path)
    assert not dead.path.exists() and "left behind" in caplog.text
    assert alive.path.exists() and new.path.exists() and other.exists()
    for d in (alive, new):
        d.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-spill-dir"]


@pytest.mark.parametrize("process", [True, False], ids=["executor-process", "in-process"])
def test_a_spill_directory_that_cannot_be_made_turns_the_tier_off(serve, store, make_pack, tmp_path, process,  # type: ignore[no-untyped-def]
                                                                 caplog) -> None:
    from tests.server.conftest import image_bytes

    store.register("t1", make_pack("t1").to_bytes())
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    with caplog.at_level(logging.WARNING, logger="server.spill"), \
            serve(spill_dir=str(blocker / "spill"), executor_process=process) as client:
        r = client.post("/v1/tasks/t1/predict", content=image_bytes())
        assert r.status_code == 200, r.text
    assert "the spill tier is off" in caplog.text


def test_a_spilled_task_is_copied_to_a_device_other_than_the_cpu(backbone, make_pack, spill) -> None:  # type: ignore[no-untyped-def]
    """The GPU path's shape (copied from the mapping, not viewed), on the meta device where CUDA is absent."""
    task = PreparedTask.from_pack(make_pack("t1"), backbone, version=1)
    spill.save(backbone.backbone_id, task)
    back = spill.load(backbone.backbone_id, task.sha256, version=1, uid=None, device=torch.device("meta"))
    assert back is not None and back.spilled
    assert all(b.device.type == "meta" and b.shape == t.shape and b.dtype == t.dtype
               for b, t in zip(back.tensors(), task.tensors()))


def test_a_load_waits_for_the_write_it_finds_queued(any_store, backbone, make_pack, spill, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A cold load queues its task's file and returns; a load of the same task meanwhile waits for that
    write and maps the file, instead of fetching the pack a second time."""
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    started, release = threading.Event(), threading.Event()
    save = SpillTier.save

    def slow_save(self, backbone_id, task):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(30)
        save(self, backbone_id, task)

    monkeypatch.setattr(SpillTier, "save", slow_save)
    first = load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)  # returns before the write
    assert started.wait(30) and (backbone.backbone_id, rec.sha256) in spill and spill.writes == 0
    threading.Timer(0.2, release.set).start()
    again = load_stored(any_store, backbone, "t1", rec.version, rec.sha256, spill=spill)  # waits, then maps it
    assert spill.writes == 1 and spill.hits == 1 and again.spilled
    assert all(torch.equal(a, b) for a, b in zip(again.tensors(), first.tensors()))


def test_close_finishes_the_queued_writes(backbone, make_pack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tier = SpillTier(1 << 30, tmp_path)
    tasks = [PreparedTask.from_pack(make_pack(f"t{i}", seed=i), backbone, version=1) for i in range(3)]
    for t in tasks:
        tier.save_later(backbone.backbone_id, t)
    tier.close()
    assert tier.writes == 3 and not tier.dir.exists()
    tier.save_later(backbone.backbone_id, tasks[0])  # after close: nothing queued, nothing raised
    assert tier.writes == 3
