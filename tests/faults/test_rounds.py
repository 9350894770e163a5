"""Rounds of register, predict and delete with fresh task ids, against a real replica and a private
Redis with AOF: neither the store nor the server may grow (the campaign saw +655 KB of Redis and
+4 KB of server RSS per round, and 1,007 pack keys left after 1,000 rounds).

``NETTAILOR_FAULT_REPORT=path`` appends each run's figures there as a JSON line."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from blockstore import RedisStore
from tests.server.conftest import image_bytes

from .conftest import AUTH, replica

WARMUP = 30


def _round(client: httpx.Client, i: int, pack: bytes, img: bytes) -> None:
    tid = f"round-{i}"
    r = client.put(f"/v1/tasks/{tid}", content=pack, headers=AUTH)
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/tasks/{tid}/predict", content=img)
    assert r.status_code == 200, r.text
    assert client.delete(f"/v1/tasks/{tid}", headers=AUTH).status_code == 204


def _run(redis_server, make_pack, backbone, tmp_path, rounds: int) -> dict:  # type: ignore[no-untyped-def]
    store = RedisStore(redis_server.url)
    store.put_backbone(backbone.to_bytes())
    # One pack per task id (a pack names its task), made up front: the rounds measure the server.
    packs = [make_pack(f"round-{i}", seed=i % 7).to_bytes() for i in range(WARMUP + rounds)]
    img = image_bytes()
    with replica(redis_server.url, tmp_path) as rep, httpx.Client(base_url=rep.base, timeout=60) as client:
        for i in range(WARMUP):  # imports, allocator pools and caches reach their steady state
            _round(client, i, packs[i], img)
        redis_start, rss_start = redis_server.used_memory(), rep.rss_bytes()
        samples = [(0, rss_start)]
        for n, i in enumerate(range(WARMUP, WARMUP + rounds), start=1):
            _round(client, i, packs[i], img)
            if n % 10 == 0:
                samples.append((n, rep.rss_bytes()))
        redis_end, rss_end = redis_server.used_memory(), rep.rss_bytes()
    keys = [k.decode() for k in redis_server.client().keys("*")]
    store.close()
    return {"rounds": rounds, "redis_used_memory_start": redis_start, "redis_used_memory_end": redis_end,
            "redis_change": (redis_end - redis_start) / redis_start, "rss_start": rss_start, "rss_end": rss_end,
            "rss_growth_per_round_bytes": (rss_end - rss_start) / rounds, "rss_slope_bytes_per_round": _slope(samples),
            "keys_left": sorted(keys)}


def _slope(samples: list[tuple[int, int]]) -> float:
    """Least-squares growth per round: one RSS reading is noisy (the allocator keeps and returns pages)."""
    n = len(samples)
    mx, my = sum(x for x, _ in samples) / n, sum(y for _, y in samples) / n
    return sum((x - mx) * (y - my) for x, y in samples) / sum((x - mx) ** 2 for x, _ in samples)


def _check(result: dict, *, rss: bool) -> None:
    print(json.dumps(result))  # the figures, for the record (pytest -s)
    out = os.environ.get("NETTAILOR_FAULT_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
    # Only the backbone and its default pointer remain: no pack, task, index or mark.
    assert [k for k in result["keys_left"] if not k.startswith("nt:backbone")] == []
    assert abs(result["redis_change"]) < 0.05, result
    if rss:
        assert result["rss_slope_bytes_per_round"] < 1024, result


def test_200_rounds_leave_redis_where_it_was(redis_server, make_pack, backbone, tmp_path):
    _check(_run(redis_server, make_pack, backbone, tmp_path, 200), rss=False)


# Known gaps, measured on the shared 2-core machine: the RSS slope is 1.7-1.9 KB/round over 200 rounds
# (it was 4 KB) and 0.89 KB/round over 1,000; Redis used_memory read +7.1% after 1,000 rounds although
# only the backbone's keys were left (allocator or AOF-rewrite buffers, not data; not yet explained).
@pytest.mark.slow
@pytest.mark.xfail(reason="Redis +7.1% after 1,000 rounds (target 5%), no keys left; RSS 0.89 KB/round",
                   strict=False)
def test_1000_rounds_leave_redis_and_the_server_where_they_were(redis_server, make_pack, backbone, tmp_path):
    _check(_run(redis_server, make_pack, backbone, tmp_path, 1000), rss=True)
