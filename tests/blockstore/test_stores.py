"""Both stores behave identically: the same tests run on DirStore and on the real Redis."""

from __future__ import annotations

import threading
import time

import pytest

from blockstore import (
    AliasNotFound,
    BackboneNotFound,
    CorruptPack,
    DigestMismatch,
    DirStore,
    InvalidAlias,
    InvalidTaskId,
    PackNotFound,
    PackTaskMismatch,
    RedisStore,
    StoreEvent,
    StoreUnavailable,
    TaskNotFound,
    TaskPack,
    TaskRecord,
    VersionNotFound,
    load_resident,
    open_store,
)
from blockstore.stores.records import ALIAS_LOG_LIMIT
from tests.conftest import flip_stored_byte


@pytest.fixture(params=["dir", pytest.param("redis", marks=pytest.mark.redis)])
def store(request, tmp_path):
    if request.param == "dir":
        return DirStore(tmp_path / "store", poll_interval=0.05)
    return request.getfixturevalue("redis_store")


def test_backbones_are_content_addressed_with_a_default(store, backbone, other_backbone):
    with pytest.raises(BackboneNotFound, match="pretrain"):
        store.get_backbone()
    bid = store.put_backbone(backbone.to_bytes())
    assert bid == backbone.backbone_id == store.default_backbone_id()
    store.put_backbone(other_backbone.to_bytes(), make_default=False)
    assert store.get_backbone() == backbone.to_bytes()
    assert store.get_backbone(other_backbone.backbone_id) == other_backbone.to_bytes()
    with pytest.raises(BackboneNotFound):
        store.get_backbone("0" * 64)
    resident = load_resident(store, device="cpu")
    assert resident.backbone_id == bid and not any(p.requires_grad for p in resident.parameters())


def test_register_versions_history_and_idempotence(store, make_pack):
    v1, v2 = make_pack(seed=1).to_bytes(), make_pack(seed=2).to_bytes()
    rec, changed = store.register("digits", v1)
    assert (rec.version, changed) == (1, True)
    rec, changed = store.register("digits", v1)  # same bytes: no new version
    assert (rec.version, changed, len(rec.history)) == (1, False, 1)
    rec, changed = store.register("digits", v2)
    assert (rec.version, changed, [h.version for h in rec.history]) == (2, True, [1, 2])
    got_rec, got = store.get_pack("digits")
    assert got == v2 and got_rec == rec
    assert TaskPack.from_bytes(got).sha256 == rec.sha256
    assert store.get_pack_bytes(rec.history[0].sha256) == v1
    assert store.list_tasks() == ["digits"]


def test_rollback_and_delete(store, make_pack):
    v1, v2 = make_pack(seed=1).to_bytes(), make_pack(seed=2).to_bytes()
    store.register("digits", v1)
    store.register("digits", v2)
    rec = store.rollback("digits", 1)
    assert rec.version == 1 and store.get_pack("digits")[1] == v1
    assert [h.version for h in rec.history] == [1, 2]
    rec, _ = store.register("digits", v2)  # re-deploying v2's bytes is a new version
    assert rec.version == 3
    with pytest.raises(VersionNotFound):
        store.rollback("digits", 9)
    store.delete("digits")
    assert store.list_tasks() == []
    with pytest.raises(TaskNotFound):
        store.get_record("digits")
    with pytest.raises(TaskNotFound):
        store.delete("digits")
    with pytest.raises(TaskNotFound):
        store.rollback("digits", 1)
    with pytest.raises(PackNotFound):
        store.get_pack_bytes("f" * 64)


@pytest.mark.parametrize("bad", ["", "../etc", ".hidden", "a/b", "a b", "x" * 65, "nt:task:x", "a\n", "\u00e9t\u00e9"])
def test_task_ids_are_strict(store, make_pack, bad):
    with pytest.raises(InvalidTaskId):
        store.register(bad, make_pack().to_bytes())
    with pytest.raises(InvalidTaskId):
        store.get_record(bad)
    with pytest.raises(InvalidTaskId):
        store.delete(bad)


def test_register_refuses_bad_bytes_and_foreign_task_ids(store, make_pack):
    data = make_pack(task_id="digits").to_bytes()
    with pytest.raises(PackTaskMismatch):
        store.register("letters", data)
    with pytest.raises(CorruptPack):
        store.register("digits", data[:-10])
    assert store.list_tasks() == []


def test_events_reach_subscribers(store, make_pack):
    seen: list[StoreEvent] = []
    sub = store.subscribe(seen.append)
    try:
        store.register("digits", make_pack(seed=1).to_bytes())
        store.register("digits", make_pack(seed=2).to_bytes())
        store.delete("digits")
        deadline = time.time() + 5
        while len(seen) < 3 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        sub.close()
    assert [(e.kind, e.task_id, e.version) for e in seen] == [
        ("register", "digits", 1), ("update", "digits", 2), ("delete", "digits", None)]


def test_concurrent_registration_storm(store, make_pack):
    """8 writers register 3 versions each of one task while a reader polls: every version lands
    exactly once, and the current pointer always names bytes that exist."""
    store.keep_versions = 100  # this test counts every version; retention is tested in test_lifecycle.py
    packs = [[make_pack(seed=100 * w + i).to_bytes() for i in range(3)] for w in range(8)]
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = 0

    def writer(mine):
        try:
            for data in mine:
                store.register("digits", data)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader():
        nonlocal reads
        while not stop.is_set():
            try:
                rec, data = store.get_pack("digits")
                assert TaskPack.from_bytes(data).sha256 == rec.sha256
                reads += 1
            except TaskNotFound:
                pass
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)
                return

    r = threading.Thread(target=reader)
    r.start()
    threads = [threading.Thread(target=writer, args=(p,)) for p in packs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors, errors
    rec = store.get_record("digits")
    shas = [h.sha256 for h in rec.history]
    assert len(shas) == 24 and len(set(shas)) == 24
    assert [h.version for h in rec.history] == list(range(1, 25))
    assert rec.sha256 == shas[-1]
    assert reads > 0


@pytest.mark.redis
def test_unreachable_redis_is_store_unavailable(make_pack):
    dead = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.5)
    for call in (dead.ping, dead.list_tasks, lambda: dead.get_record("digits"),
                 lambda: dead.register("digits", make_pack().to_bytes()), dead.get_backbone):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            call()


def test_open_store_picks_the_implementation(tmp_path, monkeypatch):
    assert isinstance(open_store(str(tmp_path / "s")), DirStore)
    assert isinstance(open_store("redis://127.0.0.1:6379/0?prefix=x:"), RedisStore)
    monkeypatch.setenv("NETTAILOR_STORE", str(tmp_path / "env"))
    s = open_store()
    assert isinstance(s, DirStore) and s.root == tmp_path / "env"


def test_unwritable_directory_is_store_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable):
        DirStore(blocker / "store")


def test_aliases_point_at_versions_and_survive_updates(store, make_pack):
    store.register("digits", make_pack(seed=1).to_bytes())
    store.register("digits", make_pack(seed=2).to_bytes())
    rec, changed = store.set_alias("digits", "production", 1)
    assert changed and rec.aliases == {"production": 1} and rec.version == 2
    assert store.set_alias("digits", "production", 1) == (rec, False)  # idempotent
    store.set_alias("digits", "canary", 2)
    rec, _ = store.register("digits", make_pack(seed=3).to_bytes())  # a new version keeps the aliases
    assert rec.version == 3 and rec.aliases == {"production": 1, "canary": 2}
    rec = store.rollback("digits", 2)
    assert rec.aliases == {"production": 1, "canary": 2}
    rec, _ = store.set_alias("digits", "production", 3)
    rec = store.delete_alias("digits", "canary")
    assert store.get_record("digits") == rec and rec.aliases == {"production": 3}
    assert [(c.alias, c.version) for c in rec.alias_log] == [
        ("production", 1), ("canary", 2), ("production", 3), ("canary", None)]
    with pytest.raises(VersionNotFound, match=r"\[1, 2, 3\]"):
        store.set_alias("digits", "production", 7)
    with pytest.raises(AliasNotFound, match="production"):
        store.delete_alias("digits", "canary")
    with pytest.raises(TaskNotFound):
        store.set_alias("letters", "production", 1)
    for bad in ("1", "7up", "", "a b", "x" * 65, "a:b"):
        with pytest.raises(InvalidAlias):
            store.set_alias("digits", bad, 1)
    store.delete("digits")
    rec, _ = store.register("digits", make_pack(seed=1).to_bytes())
    assert rec.aliases == {} and rec.alias_log == ()  # a deleted task takes its aliases with it


def test_alias_log_is_bounded(store, make_pack):
    store.register("digits", make_pack(seed=1).to_bytes())
    store.register("digits", make_pack(seed=2).to_bytes())
    for i in range(ALIAS_LOG_LIMIT + 5):
        store.set_alias("digits", "canary", 1 + i % 2)
    rec = store.get_record("digits")
    assert len(rec.alias_log) == ALIAS_LOG_LIMIT and rec.alias_log[-1].version == 1 + (ALIAS_LOG_LIMIT + 4) % 2


def test_alias_events_reach_subscribers(store, make_pack):
    store.register("digits", make_pack(seed=1).to_bytes())
    seen: list[StoreEvent] = []
    sub = store.subscribe(seen.append)
    try:
        store.set_alias("digits", "production", 1)
        store.set_alias("digits", "production", 1)  # unchanged: no event
        store.delete_alias("digits", "production")
        deadline = time.time() + 5
        while len(seen) < 2 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        sub.close()
    assert [(e.kind, e.task_id, e.version, e.alias) for e in seen] == [
        ("alias", "digits", 1, "production"), ("unalias", "digits", None, "production")]


def test_records_written_before_aliases_still_load():
    rec = TaskRecord.from_dict({"task_id": "digits", "version": 1, "sha256": "a" * 64, "backbone_id": "b" * 64,
                                "updated_at": 1.0, "history": []})
    assert rec.aliases == {} and rec.alias_log == ()
    assert TaskRecord.from_dict(rec.to_dict()) == rec


def test_concurrent_alias_changes_and_registrations(store, make_pack):
    """Writers move aliases while others register versions: nothing is lost, every change is logged."""
    store.register("digits", make_pack(seed=0).to_bytes())
    errors: list[BaseException] = []

    def mover(name):
        try:
            for _ in range(5):
                store.set_alias("digits", name, 1)
                store.delete_alias("digits", name)
            store.set_alias("digits", name, 1)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def registrar(seed):
        try:
            store.register("digits", make_pack(seed=seed).to_bytes())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=mover, args=(f"a{i}",)) for i in range(4)]
    threads += [threading.Thread(target=registrar, args=(s,)) for s in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    rec = store.get_record("digits")
    assert rec.aliases == {f"a{i}": 1 for i in range(4)}
    assert len(rec.alias_log) == 4 * 11 and len(rec.history) == 4


def test_check_pack_answers_for_a_digest_without_reading_its_bytes(store, make_pack):
    data = make_pack("digits").to_bytes()
    rec, _ = store.register("digits", data)
    store.check_pack(rec.sha256)  # stored, unmarked: a verified copy may be used
    with pytest.raises(PackNotFound):
        store.check_pack("0" * 64)
    flip_stored_byte(store, rec.sha256, len(data) - 3)
    store.check_pack(rec.sha256)  # not known to be corrupt until a read hashes it
    with pytest.raises(DigestMismatch):
        store.get_pack_bytes(rec.sha256)
    with pytest.raises(DigestMismatch, match="marked corrupt"):
        store.check_pack(rec.sha256)


def test_use_pack_bytes_counts_only_once_the_bytes_hash_to_their_address(store, make_pack):
    """``use`` runs while the digest is checked beside it: its result, or its error, stands only for bytes
    that hash to their address; bit rot answers DigestMismatch whatever ``use`` did, and marks the pack."""
    data = make_pack("digits").to_bytes()
    rec, _ = store.register("digits", data)
    assert store.use_pack_bytes(rec.sha256, "digits", len) == len(data)
    with pytest.raises(ZeroDivisionError):  # good bytes: use's own error is the answer
        store.use_pack_bytes(rec.sha256, "digits", lambda b: 1 // 0)
    with pytest.raises(PackNotFound):
        store.use_pack_bytes("0" * 64, "digits", len)
    flip_stored_byte(store, rec.sha256, len(data) - 3)
    with pytest.raises(DigestMismatch, match="hash to"):  # what use returned does not count
        store.use_pack_bytes(rec.sha256, "digits", len)
    with pytest.raises(DigestMismatch, match="marked corrupt"):  # nor what it raised; the mark is in the store
        store.use_pack_bytes(rec.sha256, "digits", lambda b: 1 // 0)
    with pytest.raises(DigestMismatch, match="marked corrupt"):
        store.check_pack(rec.sha256)
