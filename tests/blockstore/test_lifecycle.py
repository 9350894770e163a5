"""Integrity and lifecycle of stored bytes, on DirStore and the real Redis alike: digests verified on
every read, corruption marked for every reader, retention, collection, and collection racing
registration."""

from __future__ import annotations

import os
import random
import resource
import signal
import threading
import time

import pytest

from blockstore import (
    CorruptBackbone,
    CorruptRecord,
    DigestMismatch,
    DirStore,
    NetTailorError,
    PackNotFound,
    RedisStore,
    StoreEvent,
    StoreUnavailable,
    TaskNotFound,
    VersionNotFound,
)
from blockstore.stores import dirstore as dirstore_mod
from blockstore.stores import redisstore as redisstore_mod
from blockstore.stores.base import sha256_hex
from tests.conftest import flip_stored_byte


@pytest.fixture(params=["dir", pytest.param("redis", marks=pytest.mark.redis)])
def store(request, tmp_path):
    if request.param == "dir":
        return DirStore(tmp_path / "store", poll_interval=0.05)
    return request.getfixturevalue("redis_store")


def _twin(store):  # type: ignore[no-untyped-def]
    """A second handle on the same store, as another process would hold."""
    if isinstance(store, DirStore):
        return DirStore(store.root, poll_interval=0.05)
    return RedisStore("redis://127.0.0.1:6379/0", prefix=store.prefix)


def _pack_exists(store, sha: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        store.get_pack_bytes(sha)
    except PackNotFound:
        return False
    return True


def _wait_for(seen: list, n: int) -> None:
    deadline = time.time() + 5
    while len(seen) < n and time.time() < deadline:
        time.sleep(0.02)


# -- integrity ---------------------------------------------------------------------------------

def test_a_flipped_byte_is_refused_marked_announced_and_repaired(store, make_pack):
    data = make_pack("digits").to_bytes()
    rec, _ = store.register("digits", data)
    seen: list[StoreEvent] = []
    sub = _twin(store).subscribe(seen.append)
    try:
        flip_stored_byte(store, rec.sha256, len(data) - 3)  # a tensor byte: the header still parses
        with pytest.raises(DigestMismatch, match="hash to") as e:
            store.get_pack("digits")
        assert e.value.sha256 == rec.sha256
        # Every reader now refuses it, without hashing again, and sees why.
        assert rec.sha256 in _twin(store).corrupt_digests()
        with pytest.raises(DigestMismatch, match="marked corrupt"):
            _twin(store).get_pack_bytes(rec.sha256)
        _wait_for(seen, 1)
        assert [(ev.kind, ev.sha256) for ev in seen] == [("corrupt", rec.sha256)]
        # Registering the same bytes again rewrites them and clears the mark.
        again, changed = store.register("digits", data)
        assert (again.version, changed) == (1, False)
        assert store.get_pack("digits")[1] == data and store.corrupt_digests() == {}
        _wait_for(seen, 2)
        assert seen[-1].kind == "repair"
    finally:
        sub.close()


def test_a_flipped_backbone_byte_is_refused(store, backbone):
    data = backbone.to_bytes()
    bid = store.put_backbone(data)
    if isinstance(store, DirStore):
        path = store.root / "backbones" / f"{bid}.safetensors"
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x01
        path.write_bytes(bytes(raw))
    else:
        store._client.setrange(store._k("backbone", bid), len(data) - 5, bytes([data[-5] ^ 0x01]))
    with pytest.raises(CorruptBackbone, match="hash to"):
        store.get_backbone()
    assert bid in store.verify()


# -- retention and collection -------------------------------------------------------------------

def test_retention_keeps_the_last_versions_and_collects_the_rest(store, make_pack):
    store.keep_versions = 3
    packs = [make_pack(seed=i).to_bytes() for i in range(5)]
    shas = [store.register("digits", p)[0].sha256 for p in packs]
    rec = store.get_record("digits")
    assert [h.version for h in rec.history] == [3, 4, 5]
    assert [_pack_exists(store, s) for s in shas] == [False, False, True, True, True]
    assert store.rollback("digits", 3).sha256 == shas[2]
    with pytest.raises(VersionNotFound):
        store.rollback("digits", 1)
    # The newest versions and the current one are kept, even when it is older than they are.
    store.keep_versions = 1
    assert store.collect_garbage().versions_pruned == 1
    assert [h.version for h in store.get_record("digits").history] == [3, 5]
    assert [_pack_exists(store, s) for s in shas] == [False, False, True, False, True]


def test_retention_and_collection_keep_every_version_an_alias_points_at(store, make_pack):
    """An alias pins its version like the current one: pruning (on update and in a collection) keeps
    it and its bytes, whatever its age; once the alias goes, the next collection takes them."""
    store.keep_versions = 2
    packs = [make_pack(seed=i).to_bytes() for i in range(5)]
    shas = [store.register("digits", packs[0])[0].sha256]
    store.set_alias("digits", "production", 1)
    shas += [store.register("digits", p)[0].sha256 for p in packs[1:]]
    rec = store.get_record("digits")
    assert [h.version for h in rec.history] == [1, 4, 5] and rec.aliases == {"production": 1}
    assert [_pack_exists(store, s) for s in shas] == [True, False, False, True, True]
    store.keep_versions = 1
    report = store.collect_garbage()
    assert report.versions_pruned == 1 and shas[3] in report.packs_deleted and shas[0] not in report.packs_deleted
    rec = store.get_record("digits")
    assert [h.version for h in rec.history] == [1, 5] and rec.aliases == {"production": 1}
    assert store.rollback("digits", 1).sha256 == shas[0]  # still servable and restorable
    store.register("digits", packs[4])  # back to the newest bytes: a new version 6
    preview = store.collect_garbage(dry_run=True)
    assert shas[0] not in preview.packs_deleted
    store.delete_alias("digits", "production")
    assert [h.version for h in store.get_record("digits").history] == [1, 6]  # removing an alias prunes nothing
    store.collect_garbage()
    assert [h.version for h in store.get_record("digits").history] == [6]
    assert not _pack_exists(store, shas[0]) and _pack_exists(store, shas[4])


def test_delete_collects_only_what_no_task_references(store, make_pack):
    a = store.register("a", make_pack("a", seed=1).to_bytes())[0]
    b1 = store.register("b", make_pack("b", seed=2).to_bytes())[0]
    b2 = store.register("b", make_pack("b", seed=3).to_bytes())[0]
    store.delete("b")
    assert not _pack_exists(store, b1.sha256) and not _pack_exists(store, b2.sha256)
    assert _pack_exists(store, a.sha256)
    report = store.collect_garbage()
    assert report.packs_deleted == () and report.packs_kept == 1 and report.tasks == 1


def test_gc_dry_run_reports_and_changes_nothing(store, make_pack):
    kept = store.register("a", make_pack("a", seed=1).to_bytes())[0]
    store.register("a", make_pack("a", seed=2).to_bytes())
    orphan = make_pack("gone", seed=3).to_bytes()
    # Bytes no record names, as an interrupted tool or an older version of this code left them.
    digest = sha256_hex(orphan)
    if isinstance(store, DirStore):
        (store.root / "packs" / f"{digest}.pack").write_bytes(orphan)
    else:
        store._client.set(store._k("pack", digest), orphan)
    store.keep_versions = 1
    preview = store.collect_garbage(dry_run=True)
    assert preview.dry_run and preview.versions_pruned == 1
    assert set(preview.packs_deleted) == {digest, kept.sha256}
    assert preview.bytes_freed == len(orphan) + len(make_pack("a", seed=1).to_bytes())
    assert _pack_exists(store, digest) and len(store.get_record("a").history) == 2
    report = store.collect_garbage()
    assert set(report.packs_deleted) == set(preview.packs_deleted) and report.bytes_freed == preview.bytes_freed
    assert not _pack_exists(store, digest) and not _pack_exists(store, kept.sha256)
    assert store.collect_garbage().packs_deleted == ()


def test_collection_racing_registration_never_leaves_a_dangling_pointer(store, make_pack):
    """Writers register, update and delete fresh tasks while another handle collects in a loop; a
    checker asserts that every record names bytes that exist.  Any dangling pointer fails."""
    store.keep_versions = 2
    packs = {f"t{i}": [make_pack(f"t{i}", seed=10 * i + v).to_bytes() for v in range(3)] for i in range(6)}
    collector, checker = _twin(store), _twin(store)
    stop, errors = threading.Event(), []
    sweeps = checks = 0

    def writer(tid: str) -> None:
        rng = random.Random(tid)
        try:
            for _ in range(6):
                for data in packs[tid]:
                    store.register(tid, data)
                if rng.random() < 0.5:
                    store.delete(tid)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def collect() -> None:
        nonlocal sweeps
        while not stop.is_set():
            try:
                collector.collect_garbage()
                sweeps += 1
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    def check() -> None:
        nonlocal checks
        while not stop.is_set():
            for tid in checker.list_tasks():
                try:
                    rec = checker.get_record(tid)
                except TaskNotFound:
                    continue
                try:  # the record may change under us: only a record that still stands can dangle
                    for sha in rec.referenced():
                        checker.get_pack_bytes(sha)
                except PackNotFound:
                    try:
                        if checker.get_record(tid) == rec:
                            errors.append(AssertionError(f"{tid} v{rec.version} names missing bytes"))
                    except TaskNotFound:
                        pass
            checks += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in packs]
    side = [threading.Thread(target=collect), threading.Thread(target=check)]
    for t in side + threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    for t in side:
        t.join()
    assert not errors, errors[:3]
    assert sweeps > 0 and checks > 0
    for tid in store.list_tasks():
        for sha in store.get_record(tid).referenced():
            assert _pack_exists(store, sha)
    referenced = set().union(*(store.get_record(t).referenced() for t in store.list_tasks()))
    assert set(store._pack_sizes()) == referenced  # and nothing else is left


def test_a_collection_in_the_registration_window_is_survived(store, make_pack, monkeypatch):
    """The worst interleaving, forced: the pack bytes are in the store but no record names them yet,
    and a collection runs right then.  The registration must still end with its bytes stored."""
    data = make_pack("digits").to_bytes()
    other = _twin(store)
    swept: list = []

    def sweep_now() -> None:
        if not swept:
            swept.append(other._sweep(None, dry_run=False))

    if isinstance(store, DirStore):
        real = store._locked

        def locked():  # type: ignore[no-untyped-def]
            sweep_now()  # after the bytes were written, before the lock that saves the record
            return real()

        monkeypatch.setattr(store, "_locked", locked)
    else:
        store._client.set(store._k("pack", sha256_hex(data)), data)  # present, unreferenced
        real_next = redisstore_mod.next_record

        def next_record(*a, **k):  # type: ignore[no-untyped-def]
            sweep_now()  # after the WATCH saw the bytes present, before EXEC
            return real_next(*a, **k)

        monkeypatch.setattr(redisstore_mod, "next_record", next_record)
    rec, _ = store.register("digits", data)
    assert len(swept[0].packs_deleted) == 1  # the collection did take the bytes...
    assert store.get_pack("digits") == (rec, data)  # ...and the registration put them back


# -- bounded retries, malformed data, failed writes ----------------------------------------------

@pytest.mark.redis
def test_redis_retries_are_bounded(redis_store, make_pack, monkeypatch):
    redis_store.max_attempts = 3
    redis_store.register("digits", make_pack(seed=1).to_bytes())
    rival = RedisStore("redis://127.0.0.1:6379/0", prefix=redis_store.prefix)
    real_next = redisstore_mod.next_record
    calls = []

    def contended(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        rival._client.hset(rival._k("task", "digits"), "updated_at", str(len(calls)))  # every attempt conflicts
        return real_next(*a, **k)

    monkeypatch.setattr(redisstore_mod, "next_record", contended)
    with pytest.raises(StoreUnavailable, match="3 attempts"):
        redis_store.register("digits", make_pack(seed=2).to_bytes())
    assert len(calls) == 3
    assert redis_store.get_record("digits").version == 1


@pytest.mark.redis
def test_redis_wrong_types_and_malformed_records_are_domain_errors(redis_store, make_pack):
    c, k = redis_store._client, redis_store._k
    c.set(k("task", "str"), "not a hash")
    c.sadd(k("tasks"), "str")
    c.hset(k("task", "partial"), mapping={"version": "1"})
    c.sadd(k("tasks"), "partial")
    c.hset(k("task", "badjson"), mapping={"version": "1", "sha256": "0" * 64, "backbone_id": "0" * 64,
                                          "updated_at": "1.0", "history": "[{"})
    c.hset(k("task", "badbytes"), mapping={"version": b"\xff\xfe", "history": "[]"})
    for tid in ("str", "partial", "badjson", "badbytes"):
        with pytest.raises(CorruptRecord):
            redis_store.get_record(tid)
        with pytest.raises(CorruptRecord):
            redis_store.register(tid, make_pack(tid).to_bytes())
        redis_store.delete(tid)  # deleting is how an operator clears it
        with pytest.raises(TaskNotFound):
            redis_store.get_record(tid)
    c.set(k("tasks"), "not a set")
    with pytest.raises(CorruptRecord):
        redis_store.list_tasks()
    c.delete(k("tasks"))


def test_dirstore_malformed_records_are_domain_errors(dir_store, make_pack):
    (dir_store.root / "tasks" / "bad.json").write_text("{not json")
    (dir_store.root / "tasks" / "shape.json").write_text('{"task_id": "shape", "history": 3}')
    for tid in ("bad", "shape"):
        with pytest.raises(CorruptRecord):
            dir_store.get_record(tid)
        dir_store.delete(tid)
    assert dir_store.list_tasks() == []


def test_dirstore_leaves_no_temp_files_when_a_write_fails(dir_store, make_pack, backbone):
    """A real write failure (the file size limit, as a full disk would be) in the middle of a write."""
    data = make_pack().to_bytes()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, hard))
    try:
        with pytest.raises(StoreUnavailable, match="cannot write"):
            dir_store.register("digits", data)
        with pytest.raises(StoreUnavailable, match="cannot write"):
            dir_store.put_backbone(backbone.to_bytes())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert list(dir_store.root.rglob(".tmp-*")) == []
    assert dir_store.list_tasks() == []
    dir_store.register("digits", data)  # and the store works once the disk has room again


def test_gc_removes_temp_files_left_by_a_killed_writer(dir_store):
    stale = dir_store.root / "packs" / ".tmp-killed"
    fresh = dir_store.root / "packs" / ".tmp-in-flight"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"x" * 100)
    old = time.time() - 2 * dirstore_mod._STALE_TEMP_S
    os.utime(stale, (old, old))
    assert dir_store.collect_garbage().temp_files_removed == 1
    assert not stale.exists() and fresh.exists()


def test_keep_versions_is_validated(tmp_path, monkeypatch):
    from blockstore import StoreConfigError, open_store

    monkeypatch.setenv("NETTAILOR_KEEP_VERSIONS", "0")
    with pytest.raises(StoreConfigError, match="NETTAILOR_KEEP_VERSIONS"):
        open_store(str(tmp_path / "s"))
    monkeypatch.setenv("NETTAILOR_KEEP_VERSIONS", "4")
    assert open_store(str(tmp_path / "s")).keep_versions == 4
    assert open_store(str(tmp_path / "s"), keep_versions=7).keep_versions == 7
    with pytest.raises(ValueError, match="at least 1"):
        DirStore(tmp_path / "s", keep_versions=0)
    assert isinstance(StoreConfigError("x"), NetTailorError)
