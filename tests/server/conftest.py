"""Fixtures for the server: a DirStore holding the tiny backbone, apps over it, and image bytes."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from blockstore import Backbone, DirStore
from server.app import create_app
from server.settings import Settings

TOKEN = "s3cret-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# How long a test waits for something that must happen eventually (a store event reaching a replica)
# before it fails.  A bound against hanging, not a timing the test asserts: issue 11's tests assert
# none, and a 1 s bound failed on a loaded machine.
EVENTUALLY_S = 60.0


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> bytes:
    img = Image.effect_noise(size, 64 + seed).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def store(dir_store: DirStore, backbone: Backbone) -> DirStore:
    dir_store.put_backbone(backbone.to_bytes())
    return dir_store


@pytest.fixture(params=["dir", pytest.param("redis", marks=pytest.mark.redis)])
def any_store(request, tmp_path, backbone):  # type: ignore[no-untyped-def]
    """DirStore and the real Redis alike, each holding the tiny backbone."""
    store = DirStore(tmp_path / "store") if request.param == "dir" else request.getfixturevalue("redis_store")
    store.put_backbone(backbone.to_bytes())
    return store


@pytest.fixture
def make_settings(store: DirStore) -> Callable[..., Settings]:
    def factory(**kw: object) -> Settings:
        base: dict[str, object] = {"store": str(store.root), "token": TOKEN, "device": "cpu", "batch_window_ms": 1.0}
        base.update(kw)
        return Settings(**base)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Callable[..., object]:
    """``with serve(**settings) as client:`` runs an app (lifespan included) in-process."""

    @contextmanager
    def run(**kw: object) -> Iterator[TestClient]:
        with TestClient(create_app(make_settings(**kw)), raise_server_exceptions=False) as client:
            yield client

    return run


@pytest.fixture
def client(serve) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with serve() as c:
        yield c
