"""Versions a client can hold on to: ?version= and ?alias= on every predict form, alias management."""

from __future__ import annotations

from .conftest import AUTH, image_bytes
from .test_api import _reference_probs


def _probs(body: dict) -> dict[int, float]:
    return {p["index"]: p["prob"] for p in body["predictions"]}


def _two_versions(store, make_pack):  # type: ignore[no-untyped-def]
    packs = [make_pack("digits", num_classes=4, seed=s, version=str(s)) for s in (1, 2)]
    for p in packs:
        store.register("digits", p.to_bytes())
    return packs


def test_predict_a_pinned_version_beside_the_current_one(serve, store, make_pack, backbone) -> None:
    v1, v2 = _two_versions(store, make_pack)  # before the app subscribes: no store event will drop an entry
    with serve() as client:
        _pinned_beside_current(client, store, make_pack, backbone, v1, v2)


def _pinned_beside_current(client, store, make_pack, backbone, v1, v2) -> None:  # type: ignore[no-untyped-def]
    img = image_bytes()
    for pack, query, version in ((v1, "&version=1", 1), (v2, "", 2), (v2, "&version=2", 2), (v1, "&version=1", 1)):
        r = client.post(f"/v1/tasks/digits/predict?top_k=4{query}", content=img)
        assert r.status_code == 200, r.text
        assert (r.json()["version"], r.json()["pack_version"]) == (version, pack.version)
        ref = _reference_probs(pack, backbone, img)
        assert all(abs(p - float(ref[i])) < 1e-4 for i, p in _probs(r.json()).items())
    cache = client.app.state.cache
    assert sorted(cache.cached_tasks()) == ["digits", "digits@1"]  # the current entry is reused for version 2
    r = client.post("/v1/tasks/digits/predict_batch?version=1",
                    files=[("files", ("a.png", img, "image/png")), ("files", ("b.png", img, "image/png"))])
    assert r.status_code == 200 and r.json()["version"] == 1
    store.register("t2", make_pack("t2").to_bytes())
    r = client.post("/v1/predict?tasks=digits,t2&version=1", content=img)
    assert r.status_code == 200 and {k: v["version"] for k, v in r.json()["results"].items()} == {"digits": 1, "t2": 1}


def test_a_version_not_retained_is_404_naming_those_that_are(client, store, make_pack) -> None:
    _two_versions(store, make_pack)
    r = client.post("/v1/tasks/digits/predict?version=7", content=image_bytes())
    assert r.status_code == 404 and r.json()["error"] == "version_not_found"
    assert "[1, 2]" in r.json()["detail"]
    r = client.post("/v1/tasks/digits/predict?version=0", content=image_bytes())
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    r = client.post("/v1/tasks/digits/predict?version=1&alias=production", content=image_bytes())
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    r = client.post("/v1/tasks/digits/predict?alias=9lives", content=image_bytes())
    assert r.status_code == 422 and r.json()["error"] == "invalid_alias"


def test_aliases_are_set_by_operators_and_followed_by_predict(client, store, make_pack) -> None:
    _two_versions(store, make_pack)
    img = image_bytes()
    assert client.put("/v1/tasks/digits/aliases/production", json={"version": 1}).status_code == 401
    r = client.put("/v1/tasks/digits/aliases/production", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"task_id": "digits", "aliases": {"production": 1}, "changed": True}
    r = client.put("/v1/tasks/digits/aliases/production", json={"version": 1}, headers=AUTH)
    assert r.json()["changed"] is False
    assert client.post("/v1/tasks/digits/predict?alias=production", content=img).json()["version"] == 1
    r = client.put("/v1/tasks/digits/aliases/production", json={"version": 2}, headers=AUTH)
    assert r.status_code == 200  # read-your-writes on this replica: the alias table is dropped at once
    assert client.post("/v1/tasks/digits/predict?alias=production", content=img).json()["version"] == 2
    r = client.put("/v1/tasks/digits/aliases/canary", json={"version": 5}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "version_not_found"
    r = client.put("/v1/tasks/digits/aliases/1st", json={"version": 1}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"] == "invalid_alias"
    detail = client.get("/v1/tasks/digits").json()
    assert detail["aliases"] == {"production": 2}
    assert [(c["alias"], c["version"]) for c in detail["alias_log"]] == [("production", 1), ("production", 2)]
    assert client.delete("/v1/tasks/digits/aliases/production").status_code == 401
    assert client.delete("/v1/tasks/digits/aliases/production", headers=AUTH).status_code == 204
    r = client.post("/v1/tasks/digits/predict?alias=production", content=img)
    assert r.status_code == 404 and r.json()["error"] == "alias_not_found"
    r = client.delete("/v1/tasks/digits/aliases/production", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "alias_not_found"
    assert client.put("/v1/tasks/nope/aliases/production", json={"version": 1}, headers=AUTH).status_code == 404


def test_pinned_entries_follow_store_changes(serve, store, make_pack) -> None:
    _two_versions(store, make_pack)
    with serve() as client:
        _pinned_entries_follow(client, store, make_pack)


def _pinned_entries_follow(client, store, make_pack) -> None:  # type: ignore[no-untyped-def]
    img = image_bytes()
    assert client.post("/v1/tasks/digits/predict?version=1", content=img).json()["version"] == 1
    cache = client.app.state.cache
    assert "digits@1" in cache.cached_tasks()
    r = client.put("/v1/tasks/digits", content=make_pack("digits", seed=3).to_bytes(), headers=AUTH)
    assert r.json()["version"] == 3
    assert "digits@1" not in cache.cached_tasks()  # any change may have pruned the version: re-read it
    assert client.post("/v1/tasks/digits/predict?version=1", content=img).json()["version"] == 1
    assert client.post("/v1/tasks/digits/predict", content=img).json()["version"] == 3
    assert client.delete("/v1/tasks/digits", headers=AUTH).status_code == 204
    assert not [k for k in cache.cached_tasks() if k.startswith("digits")]
    store.register("digits", make_pack("digits", seed=9).to_bytes())  # a new task 'digits' restarts at 1
    r = client.post("/v1/tasks/digits/predict?version=2", content=img)
    assert r.status_code == 404 and "[1]" in r.json()["detail"]


def test_the_record_table_keeps_nothing_for_deleted_tasks_and_drops_a_raced_read(store, make_pack) -> None:
    """An event during a read keeps the read out of the table; with no read in flight, an event for a
    task leaves no trace (the table once kept a counter per task id ever seen)."""
    import asyncio
    import threading

    from blockstore import StoreEvent
    from server.records import RecordTable

    store.register("digits", make_pack("digits").to_bytes())
    store.set_alias("digits", "prod", 1)
    table = RecordTable(store)
    started, release = threading.Event(), threading.Event()
    real = store.get_record

    def slow_get_record(task_id):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)
        return real(task_id)

    async def raced() -> int:
        store.get_record = slow_get_record  # type: ignore[method-assign]
        read = asyncio.ensure_future(table.resolve("digits", "prod"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        table.on_event(StoreEvent("alias", "digits", alias="prod"))  # the alias moved during the read
        release.set()
        version = await read
        store.get_record = real  # type: ignore[method-assign]
        return version

    assert asyncio.run(raced()) == 1
    assert dict(table._records) == {} and table._readers == {} and table._raced == set()  # not cached: it raced
    assert asyncio.run(table.resolve("digits", "prod")) == 1
    assert list(table._records) == ["digits"]
    for i in range(1000):  # events for task ids nobody reads
        table.on_event(StoreEvent("delete", f"gone-{i}"))
    table.on_event(StoreEvent("delete", "digits"))
    assert dict(table._records) == {} and table._readers == {} and table._raced == set()
