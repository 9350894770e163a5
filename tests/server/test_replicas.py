"""Real processes on the real Redis: uvicorn serving packs, and two replicas staying consistent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from blockstore import RedisStore
from server.app import create_app
from server.settings import Settings

from .conftest import AUTH, EVENTUALLY_S, TOKEN, image_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(store: RedisStore) -> str:
    return f"redis://127.0.0.1:6379/0?prefix={store.prefix}"


@contextmanager
def uvicorn_server(store_url: str) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, NETTAILOR_STORE=store_url, NETTAILOR_TOKEN=TOKEN, NETTAILOR_DEVICE="cpu",
               NETTAILOR_BATCH_WINDOW_MS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"uvicorn exited with {proc.returncode}:\n{out[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for_version(base: str, task: str, want: int | None, seconds: float = EVENTUALLY_S) -> None:
    """Poll until ``base`` answers ``task`` with version ``want`` (None: 404).  ``seconds`` only bounds a
    test that would otherwise hang: how fast a store event propagates is the benchmarks' to measure,
    and asserting it here failed on a loaded machine."""
    img = image_bytes()
    t0 = time.monotonic()
    while True:
        r = httpx.post(f"{base}/v1/tasks/{task}/predict", content=img, timeout=30)
        got = r.json().get("version") if r.status_code == 200 else None
        if got == want and (want is not None or r.status_code == 404):
            return
        assert time.monotonic() - t0 < seconds, f"{base} still answers {r.status_code} {r.text[:200]}"
        time.sleep(0.02)


@pytest.mark.slow
def test_two_replicas_share_one_redis(redis_store, backbone, make_pack) -> None:
    redis_store.put_backbone(backbone.to_bytes())
    v1, v2 = make_pack("shared", seed=1).to_bytes(), make_pack("shared", seed=2, version="2").to_bytes()
    with uvicorn_server(_url(redis_store)) as a, uvicorn_server(_url(redis_store)) as b:
        r = httpx.put(f"{a}/v1/tasks/shared", content=v1, headers=AUTH, timeout=30)
        assert r.status_code == 201, r.text
        wait_for_version(b, "shared", 1)  # registered through A, served by B
        assert httpx.get(f"{b}/v1/tasks/shared").json()["version"] == 1
        assert httpx.put(f"{a}/v1/tasks/shared", content=v2, headers=AUTH, timeout=30).status_code == 200
        wait_for_version(b, "shared", 2)  # B held v1 in its cache: the event dropped it
        assert httpx.post(f"{b}/v1/tasks/shared/rollback", json={"version": 1}, headers=AUTH).status_code == 200
        wait_for_version(a, "shared", 1)
        assert httpx.delete(f"{a}/v1/tasks/shared", headers=AUTH).status_code == 204
        wait_for_version(b, "shared", None)
        assert "nettailor_requests_total" in httpx.get(f"{b}/metrics").text


@pytest.fixture
def redis_app(redis_store, backbone, make_pack) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    redis_store.put_backbone(backbone.to_bytes())
    redis_store.register("t1", make_pack("t1").to_bytes())
    redis_store.register("t2", make_pack("t2", seed=2).to_bytes())
    settings = Settings(store=_url(redis_store), token=TOKEN, device="cpu", batch_window_ms=1.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_redis_outage_keeps_cached_tasks_serving(redis_app) -> None:
    c = redis_app
    assert c.post("/v1/tasks/t1/predict", content=image_bytes()).status_code == 200
    store = c.app.state.store
    healthy = store._client
    # Nobody listens there.  No retries: redis-py's default backoff would only make the test slow.
    store._client = redis.Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=1,
                                retry=Retry(NoBackoff(), 0))
    try:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "degraded"
        assert c.post("/v1/tasks/t1/predict", content=image_bytes()).status_code == 200
        r = c.post("/v1/tasks/t2/predict", content=image_bytes())
        assert r.status_code == 503 and r.json()["error"] == "store_unavailable"
        r = c.put("/v1/tasks/t2", content=b"x" * 64, headers=AUTH)
        assert r.status_code == 422  # bad bytes are refused before the store is asked
    finally:
        store._client = healthy
    assert c.get("/readyz").status_code == 200
    assert c.post("/v1/tasks/t2/predict", content=image_bytes()).status_code == 200
