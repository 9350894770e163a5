"""Every method of the AsyncClient against the real server: over TCP, and in-process over ASGI."""

from __future__ import annotations

import httpx
import pytest

from nettailor_client import AsyncClient, Forbidden, TaskNotFound, Unauthorized

from .conftest import TOKEN, build_pack, png

pytestmark = pytest.mark.anyio


async def test_every_method(live_server) -> None:
    pack_v1 = build_pack(live_server.backbone, "async-task", 2, version="a").to_bytes()
    pack_v2 = build_pack(live_server.backbone, "async-task", 2, version="b").to_bytes()
    # A generous read timeout: this tests behaviour, not speed (a throttled machine took over 10 s).
    async with AsyncClient(live_server.url, token=TOKEN, retries=0, timeout=120) as c:
        assert (await c.health())["status"] == "ok"
        assert {"alpha", "beta", "gamma"} <= {t.task_id for t in await c.list_tasks()}
        assert (await c.get_task("alpha")).num_classes == 3
        assert (await c.predict("alpha", png(), top_k=2)).predictions[1].prob >= 0
        assert len((await c.predict_batch("beta", [png(), png(seed=1)])).results) == 2
        assert set((await c.predict_multi(png(), "alpha,gamma")).results) == {"alpha", "gamma"}
        await c.prefetch("beta")

        assert (await c.register("async-task", pack_v1)).version == 1
        assert (await c.register("async-task", pack_v2)).version == 2
        assert (await c.rollback("async-task", 1)).version == 1
        assert (await c.predict("async-task", png())).pack_version == "a"
        await c.delete("async-task")
        with pytest.raises(TaskNotFound):
            await c.get_task("async-task")


async def test_async_session(live_server) -> None:
    async with AsyncClient(live_server.url, retries=0) as c, c.task("alpha") as t:
        await t.predict(png())
        await t.hint_next("beta")
        t.switch("beta")
        p = await t.predict(png())
        assert p.task_id == "beta"
        await t.hint_next("gamma", prefetch=True)
        await t.predict(png())
        assert [(r.task_id, r.switched, r.hinted) for r in t.records] == [
            ("alpha", True, None), ("beta", True, "beta"), ("beta", False, None)]


async def test_in_process_asgi(live_server) -> None:
    """No socket at all: the SDK over httpx.ASGITransport wrapping a second app on the same store."""
    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(store=str(live_server.root), token=TOKEN, device="cpu"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://in-process", token="nope", transport=transport, retries=0) as c:
            assert (await c.predict("gamma", png())).task_id == "gamma"
            with pytest.raises(Forbidden):
                await c.delete("gamma")
        async with AsyncClient("http://in-process", token="", transport=transport, retries=0) as c:
            with pytest.raises(Unauthorized):
                await c.delete("gamma")
