"""Bit rot in Redis, as the campaign injected it: one byte flipped in place, the length kept.

Every flip must be detected: no replica, fresh or long running, answers 200 from damaged bytes, and
all of them list the task as unavailable.  Re-registering the bytes repairs it everywhere."""

from __future__ import annotations

import random
import time

import httpx

from blockstore import RedisStore
from tests.server.conftest import EVENTUALLY_S, image_bytes

from .conftest import AUTH, replica

TASKS = 8


def _flip(client, key: str, offset: int) -> None:  # type: ignore[no-untyped-def]
    byte = client.getrange(key, offset, offset)
    client.setrange(key, offset, bytes([byte[0] ^ (1 << random.Random(offset).randrange(8))]))


def _statuses(base: str, ids: list[str]) -> dict[str, int]:
    img = image_bytes()
    return {t: httpx.post(f"{base}/v1/tasks/{t}/predict", content=img, timeout=30).status_code for t in ids}


def test_every_flipped_pack_byte_is_detected_on_every_replica(redis_server, make_pack, backbone, tmp_path):
    store = RedisStore(redis_server.url)
    store.put_backbone(backbone.to_bytes())
    packs = {f"t{i}": make_pack(f"t{i}", seed=i).to_bytes() for i in range(TASKS)}
    shas = {t: store.register(t, data)[0].sha256 for t, data in packs.items()}
    ids = sorted(packs)
    with replica(redis_server.url, tmp_path) as running:
        assert set(_statuses(running.base, ids).values()) == {200}  # all cached on the running replica
        # One byte per pack, spread from the header's length field to the last tensor byte.
        rng = random.Random(0)
        offsets = [0, 3, 8, 20] + [rng.randrange(len(packs[t])) for t in ids[4:-1]] + [len(packs[ids[-1]]) - 1]
        for t, off in zip(ids, offsets):
            _flip(redis_server.client(), store._k("pack", shas[t]), off)
        with replica(redis_server.url, tmp_path) as fresh:
            assert set(_statuses(fresh.base, ids).values()) == {503}  # the fresh one reads and detects
            # The running one held good copies; the store's corrupt events make it drop them.
            deadline = time.monotonic() + EVENTUALLY_S
            while set(got := _statuses(running.base, ids).values()) != {503} and time.monotonic() < deadline:
                time.sleep(0.1)
            assert set(got) == {503}
            for rep in (running, fresh):
                listed = httpx.get(f"{rep.base}/v1/tasks", timeout=30).json()["tasks"]
                assert {t["task_id"]: t["status"] for t in listed} == dict.fromkeys(ids, "unavailable")
                r = httpx.get(f"{rep.base}/v1/tasks/{ids[0]}", timeout=30)
                assert (r.status_code, r.json()["error"]) == (503, "task_unavailable")
            metrics = httpx.get(f"{fresh.base}/metrics").text
            assert f'nettailor_integrity_failures_total{{kind="pack"}} {float(TASKS)}' in metrics
            # The same bytes, registered again, repair the task on both replicas.
            assert httpx.put(f"{fresh.base}/v1/tasks/{ids[0]}", content=packs[ids[0]], headers=AUTH,
                             timeout=60).status_code == 200
            deadline = time.monotonic() + EVENTUALLY_S
            while _statuses(running.base, ids[:1])[ids[0]] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _statuses(running.base, ids[:1]) == _statuses(fresh.base, ids[:1]) == {ids[0]: 200}
    store.close()


def test_a_flipped_backbone_byte_keeps_the_server_unready_until_repaired(redis_server, backbone, tmp_path):
    store = RedisStore(redis_server.url)
    data = backbone.to_bytes()
    bid = store.put_backbone(data)
    _flip(redis_server.client(), store._k("backbone", bid), len(data) - 100)
    with replica(redis_server.url, tmp_path, wait_ready=False) as rep:
        r = httpx.get(f"{rep.base}/readyz", timeout=5)
        assert r.status_code == 503 and "corrupt" in r.json()["detail"], r.text
        assert 'nettailor_integrity_failures_total{kind="backbone"}' in httpx.get(f"{rep.base}/metrics").text
        r = httpx.get(f"{rep.base}/v1/tasks", timeout=5)
        assert (r.status_code, r.json()["error"]) == (503, "not_ready")
        store.put_backbone(data)  # the operator stores it again
        deadline = time.monotonic() + 30
        while not rep.ready() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rep.ready()
    store.close()
