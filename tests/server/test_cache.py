"""The pack cache: single flight, reference counts, byte-bounded LRU, invalidation."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import torch

from blockstore import DirStore, TaskPack
from server.cache import PackCache
from server.executor import Executor, PreparedTask
from server.metrics import Metrics

from .conftest import EVENTUALLY_S, image_bytes


def _cache(store: DirStore, backbone, capacity: int = 1 << 30, **kw) -> PackCache:  # type: ignore[no-untyped-def]
    return PackCache(store, backbone, capacity, Metrics(), **kw)


def test_fifty_concurrent_first_requests_load_once(client, store, make_pack, monkeypatch) -> None:
    store.register("t1", make_pack("t1").to_bytes())
    server_store = client.app.state.store
    real, calls = server_store.use_pack_bytes, []

    def slow_use_pack_bytes(sha256: str, task_id: str | None, use):  # type: ignore[no-untyped-def]
        calls.append(task_id)
        time.sleep(0.3)  # a wide window for the other 49 to miss too
        return real(sha256, task_id, use)

    monkeypatch.setattr(server_store, "use_pack_bytes", slow_use_pack_bytes)
    img = image_bytes()

    async def fire() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            rs = await asyncio.gather(*[ac.post("/v1/tasks/t1/predict", content=img) for _ in range(50)])
        return [r.status_code for r in rs]

    assert client.portal.call(fire) == [200] * 50
    assert calls == ["t1"]
    text = client.get("/metrics").text
    assert 'nettailor_pack_load_seconds_count{source="store"} 1.0' in text
    assert "nettailor_cache_misses_total 50.0" in text


def test_single_flight_across_threads(store, backbone, make_pack) -> None:
    store.register("t1", make_pack("t1").to_bytes())
    gate = threading.Event()
    cache = _cache(store, backbone)
    real = cache._prepare

    def loader(tid: str, version: int, sha256: str, trusted: bool) -> PreparedTask:
        gate.wait(5)
        return real(tid, version, sha256, trusted)

    cache._prepare = loader
    leases: list = []
    threads = [threading.Thread(target=lambda: leases.append(cache.lease("t1"))) for _ in range(20)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(10)
    assert cache.loads == 1 and len({id(lease.task) for lease in leases}) == 1
    for lease in leases:
        lease.release()


def test_a_lease_keeps_its_tensors_through_update_and_delete(store, backbone, make_pack) -> None:
    store.register("t1", make_pack("t1", seed=1).to_bytes())
    cache = _cache(store, backbone)
    lease = cache.lease("t1")
    before = [t.clone() for t in lease.task.tensors()]
    nbytes = lease.task.nbytes
    store.register("t1", make_pack("t1", seed=2, version="2").to_bytes())
    cache.invalidate("t1")
    with cache.lease("t1") as fresh:
        assert (fresh.task.version, fresh.task.pack_version) == (2, "2")
        assert cache.nbytes == 2 * nbytes  # the old tensors still count: a request holds them
    assert lease.task.version == 1
    assert all(torch.equal(a, b) for a, b in zip(before, lease.task.tensors(), strict=True))
    store.delete("t1")
    cache.invalidate("t1")
    assert all(torch.equal(a, b) for a, b in zip(before, lease.task.tensors(), strict=True))
    lease.release()
    assert cache.nbytes == 0


def test_lru_is_bounded_in_bytes(store, backbone, make_pack) -> None:
    for i in range(3):
        store.register(f"t{i}", make_pack(f"t{i}", seed=i).to_bytes())
    probe = _cache(store, backbone)
    with probe.lease("t0") as lease:
        one = lease.task.nbytes
    cache = _cache(store, backbone, capacity=int(2.5 * one))
    for tid in ("t0", "t1", "t0", "t2"):  # t1 is the least recently used when t2 arrives
        cache.lease(tid).release()
    assert sorted(cache.cached_tasks()) == ["t0", "t2"] and cache.nbytes <= 2.5 * one
    assert cache.metrics.cache_evictions.labels("capacity")._value.get() == 1
    tiny = _cache(store, backbone, capacity=one // 2)  # a pack over the whole budget is served, not kept
    with tiny.lease("t0") as lease:
        assert lease.task.task_id == "t0"
    assert tiny.cached_tasks() == [] and tiny.nbytes == 0


def test_a_rarely_asked_task_does_not_push_out_a_popular_one(store, backbone, make_pack) -> None:
    """Admission (TinyLFU): with room for two, t0 asked for three times stays when t2, asked for once,
    arrives; t2 is still answered, and kept once it is asked for as often as the least recent entry."""
    for i in range(3):
        store.register(f"t{i}", make_pack(f"t{i}", seed=i).to_bytes())
    one = _cache(store, backbone).lease("t0").task.nbytes
    cache = _cache(store, backbone, capacity=int(2.5 * one))
    for tid in ("t1", "t0", "t0", "t0", "t1"):  # t0 is the least recently used, and the most popular
        cache.lease(tid).release()
    with cache.lease("t2") as lease:
        assert lease.task.task_id == "t2"
    assert sorted(cache.cached_tasks()) == ["t0", "t1"]
    assert cache.metrics.cache_evictions.labels("admission")._value.get() == 1
    for _ in range(3):
        cache.lease("t2").release()  # now asked for as often as t1: it takes the colder one's place
    assert sorted(cache.cached_tasks()) == ["t0", "t2"]  # t0, least recent but most asked for, stays


def test_a_large_rarely_asked_task_goes_before_a_small_popular_one(store, backbone, make_pack) -> None:
    """The victim is the least asked for *per byte* among the least recently used: plain LRU would push
    out ``small`` here (the least recent); the cache pushes out ``large``, asked for twice but several
    times the size."""
    store.register("small", make_pack("small", seed=0).to_bytes())
    store.register("new", make_pack("new", seed=1).to_bytes())
    store.register("large", make_pack("large", seed=2, num_classes=3000).to_bytes())
    probe = _cache(store, backbone)
    one, big = probe.lease("small").task.nbytes, probe.lease("large").task.nbytes
    assert big > 3 * one
    cache = _cache(store, backbone, capacity=one + big + one // 2)
    for tid in ("small", "large", "large"):
        cache.lease(tid).release()
    cache.lease("new").release()
    assert sorted(cache.cached_tasks()) == ["new", "small"]
    assert cache.metrics.cache_evictions.labels("capacity")._value.get() == 1


def test_an_invalidation_during_a_load_is_not_lost(store, backbone, make_pack) -> None:
    store.register("t1", make_pack("t1", seed=1).to_bytes())
    cache = _cache(store, backbone)
    started, go = threading.Event(), threading.Event()
    real = cache._prepare

    def loader(tid: str, version: int, sha256: str, trusted: bool) -> PreparedTask:
        task = real(tid, version, sha256, trusted)  # reads version 1
        started.set()
        go.wait(5)
        return task

    cache._prepare = loader
    t = threading.Thread(target=lambda: cache.lease("t1").release())
    t.start()
    assert started.wait(5)
    store.register("t1", make_pack("t1", seed=2, version="2").to_bytes())
    cache.invalidate("t1")  # the store event arrives while version 1 is being prepared
    go.set()
    t.join(5)
    assert cache.cached_tasks() == []
    cache._prepare = real
    with cache.lease("t1") as lease:
        assert lease.task.version == 2


def test_store_events_drop_stale_entries(client, store, make_pack) -> None:
    """A change made behind the server's back (another replica, the CLI) reaches it through store events."""
    store.register("t1", make_pack("t1", seed=1).to_bytes())
    img = image_bytes()
    assert client.post("/v1/tasks/t1/predict", content=img).json()["version"] == 1
    store.register("t1", make_pack("t1", seed=2, version="2").to_bytes())
    deadline = time.monotonic() + EVENTUALLY_S
    while client.post("/v1/tasks/t1/predict", content=img).json()["version"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.delete("t1")
    deadline = time.monotonic() + EVENTUALLY_S
    while client.post("/v1/tasks/t1/predict", content=img).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_prepared_task_round_trip_matches_pack(store, backbone, make_pack) -> None:
    pack = make_pack("t1", seed=4)
    store.register("t1", pack.to_bytes())
    with _cache(store, backbone).lease("t1") as lease:
        x = torch.randn(2, 3, 32, 32)
        ref = TaskPack.from_bytes(pack.to_bytes()).build(backbone)
        out = Executor(backbone).run([(lease.task, xi) for xi in x])
        with torch.inference_mode():
            assert torch.allclose(torch.stack(out), ref(x), atol=1e-5)
