"""Outages under load: Redis killed with -9 and restarted from its AOF; a replica killed during an
update; a server started before anything was trained."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter

import httpx

from blockstore import DirStore, RedisStore
from tests.server.conftest import EVENTUALLY_S, image_bytes

from .conftest import AUTH, replica


def _load(base: str, tasks: list[str], stop: threading.Event, seen: Counter, versions: list) -> None:
    img = image_bytes()
    with httpx.Client(base_url=base, timeout=30) as c:
        while not stop.is_set():
            for t in tasks:
                try:
                    r = c.post(f"/v1/tasks/{t}/predict", content=img)
                except httpx.HTTPError as e:
                    seen[type(e).__name__] += 1
                    continue
                seen[r.status_code] += 1
                if r.status_code == 200:
                    versions.append((t, r.json()["version"], r.json()["predictions"][0]["label"]))


def test_redis_killed_and_restarted_under_load(redis_server, make_pack, backbone, tmp_path):
    store = RedisStore(redis_server.url)
    store.put_backbone(backbone.to_bytes())
    for t in ("a", "b"):
        store.register(t, make_pack(t, seed=1).to_bytes())
    store.register("a", make_pack("a", seed=2, version="2").to_bytes())
    with replica(redis_server.url, tmp_path) as rep:
        stop, seen, versions = threading.Event(), Counter(), []
        load = threading.Thread(target=_load, args=(rep.base, ["a", "b"], stop, seen, versions))
        load.start()
        try:
            while seen[200] < 20:
                time.sleep(0.05)
            redis_server.kill()
            readiness = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = httpx.get(f"{rep.base}/readyz", timeout=10)
                readiness.append(r.json()["status"])
                if r.status_code == 503:
                    break
                time.sleep(0.05)
            assert readiness[-1] == "degraded", readiness
            served_during = seen[200]
            time.sleep(1.0)
            redis_server.start()  # from the AOF in the same directory
            deadline = time.monotonic() + 60
            while not rep.ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert rep.ready()
            time.sleep(0.5)
        finally:
            stop.set()
            load.join()
        assert set(seen) == {200}, seen  # cached tasks kept serving through the outage
        assert seen[200] > served_during
        assert {(t, v) for t, v, _ in versions} == {("a", 2), ("b", 1)}
    again = RedisStore(redis_server.url)
    assert [h.version for h in again.get_record("a").history] == [1, 2]  # no version history lost
    assert again.list_tasks() == ["a", "b"]
    again.close()
    store.close()


def test_a_replica_killed_during_an_update_leaves_the_store_whole(redis_server, make_pack, backbone, tmp_path):
    store = RedisStore(redis_server.url)
    store.put_backbone(backbone.to_bytes())
    packs = [make_pack("live", seed=s, version=str(s)).to_bytes() for s in range(1, 7)]
    store.register("live", packs[0])
    with replica(redis_server.url, tmp_path) as victim, replica(redis_server.url, tmp_path) as survivor:
        stop, seen, versions = threading.Event(), Counter(), []
        load = threading.Thread(target=_load, args=(survivor.base, ["live"], stop, seen, versions))
        load.start()
        try:
            for data in packs[1:4]:  # updates through the victim, under load on the survivor
                assert httpx.put(f"{victim.base}/v1/tasks/live", content=data, headers=AUTH,
                                 timeout=60).status_code == 200
            killer = threading.Timer(0.05, victim.kill)
            killer.start()
            # Killed while it reads, validates or stores this one: either outcome leaves the store whole.
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(f"{victim.base}/v1/tasks/live", content=packs[4], headers=AUTH, timeout=60)
            killer.join()
            assert victim.proc.poll() is not None
            assert httpx.put(f"{survivor.base}/v1/tasks/live", content=packs[5], headers=AUTH,
                             timeout=60).status_code == 200
            deadline = time.monotonic() + EVENTUALLY_S
            while (not versions or versions[-1][1] != store.get_record("live").version) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            load.join()
    assert set(seen) == {200}, seen  # the survivor never noticed
    rec = store.get_record("live")
    assert versions[-1][1] == rec.version  # it serves what the store says is current
    for sha in rec.referenced():  # and the store names no missing or damaged bytes
        store.get_pack_bytes(sha)
    store.close()


def test_serving_before_anything_is_trained(tmp_path, backbone, make_pack):
    """An empty store: the server starts, is not ready ('no backbone'), and becomes ready when a
    backbone is published, with no restart."""
    store = DirStore(tmp_path / "store")
    with replica(str(store.root), tmp_path, wait_ready=False) as rep:
        r = httpx.get(f"{rep.base}/readyz", timeout=10)
        assert r.status_code == 503 and r.json()["detail"].startswith("no backbone"), r.text
        assert httpx.get(f"{rep.base}/healthz").status_code == 200
        r = httpx.post(f"{rep.base}/v1/tasks/t1/predict", content=image_bytes(), timeout=10)
        assert (r.status_code, r.json()["error"]) == (503, "not_ready")
        store.put_backbone(backbone.to_bytes())
        store.register("t1", make_pack("t1").to_bytes())
        deadline = time.monotonic() + 60
        while not rep.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rep.ready()
        r = httpx.post(f"{rep.base}/v1/tasks/t1/predict", content=image_bytes(), timeout=30)
        assert r.status_code == 200, r.text
        assert "Traceback" not in rep.log.read_text()
