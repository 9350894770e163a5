"""The HTTP contract (docs/http-api.md): predict forms, task management, auth, operations, OpenAPI."""

from __future__ import annotations

import torch

from blockstore import Preprocess, TaskPack

from .conftest import AUTH, image_bytes


def _reference_probs(pack: TaskPack, backbone, img: bytes) -> torch.Tensor:  # type: ignore[no-untyped-def]
    import io

    from PIL import Image

    pre: Preprocess = pack.preprocess
    x = pre.normalize(pre.to_uint8(Image.open(io.BytesIO(img)))[None])
    with torch.inference_mode():
        return torch.softmax(pack.build(backbone)(x)[0], 0)


def test_predict_raw_and_multipart_match_the_tailored_net(client, store, make_pack, backbone) -> None:
    pack = make_pack("digits", num_classes=4, seed=1)
    store.register("digits", pack.to_bytes())
    img = image_bytes("PNG", mode="L")
    ref = _reference_probs(pack, backbone, img)
    raw = client.post("/v1/tasks/digits/predict?top_k=4", content=img, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["task_id"] == "digits" and body["version"] == 1 and body["pack_version"] == "1"
    assert set(body["timings_ms"]) == {"decode", "queue", "infer", "total"}
    got = {p["index"]: p["prob"] for p in body["predictions"]}
    assert [p["label"] for p in body["predictions"]] == [f"class-{i}" for i in ref.argsort(descending=True).tolist()]
    for i, p in got.items():
        assert abs(p - float(ref[i])) < 1e-4
    multi = client.post("/v1/tasks/digits/predict?top_k=4", files={"file": ("x.png", img, "image/png")})
    assert multi.status_code == 200 and multi.json()["predictions"] == body["predictions"]


def test_predict_accepts_jpeg_webp_grey_and_colour(client, store, make_pack) -> None:
    store.register("t1", make_pack("t1").to_bytes())
    for fmt in ("JPEG", "PNG", "WEBP"):
        for mode in ("L", "RGB"):
            r = client.post("/v1/tasks/t1/predict?top_k=2", content=image_bytes(fmt, mode=mode),
                            headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 200, (fmt, mode, r.text)
            assert len(r.json()["predictions"]) == 2
    rgba = image_bytes("PNG", mode="RGBA")
    assert client.post("/v1/tasks/t1/predict", content=rgba).status_code == 200


def test_batch_and_multi_task_forms(client, store, make_pack, backbone) -> None:
    packs = {t: make_pack(t, num_classes=3, seed=i) for i, t in enumerate(["a", "b", "c"])}
    for t, p in packs.items():
        store.register(t, p.to_bytes())
    imgs = [image_bytes(seed=i) for i in range(3)]
    r = client.post("/v1/tasks/a/predict_batch?top_k=3", files=[("files", (f"{i}.png", b, "image/png"))
                                                                 for i, b in enumerate(imgs)])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3
    for img, res in zip(imgs, results):
        ref = _reference_probs(packs["a"], backbone, img)
        for lab in res:
            assert abs(lab["prob"] - float(ref[lab["index"]])) < 1e-4
    r = client.post("/v1/predict?tasks=a,b,c&top_k=3", content=imgs[0], headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert list(out) == ["a", "b", "c"]
    for t in out:
        ref = _reference_probs(packs[t], backbone, imgs[0])
        for lab in out[t]["predictions"]:
            assert abs(lab["prob"] - float(ref[lab["index"]])) < 1e-4


def test_task_listing_and_detail(client, store, make_pack) -> None:
    store.register("digits", make_pack("digits", num_classes=5).to_bytes())
    r = client.get("/v1/tasks")
    assert r.status_code == 200
    (s,) = r.json()["tasks"]
    assert s["task_id"] == "digits" and s["num_classes"] == 5 and s["accuracy"] == 0.89
    assert s["flops"] > 0 and s["backbone_flops"] > 0 and s["blocks_kept"] <= s["blocks_total"]
    d = client.get("/v1/tasks/digits").json()
    assert d["labels"] == [f"class-{i}" for i in range(5)] and d["preprocess"]["size"] == 32
    assert [h["version"] for h in d["history"]] == [1] and len(d["sha256"]) == 64


def test_register_update_delete_rollback_with_the_token(client, make_pack) -> None:
    v1, v2 = make_pack("dogs", seed=1).to_bytes(), make_pack("dogs", seed=2, version="2").to_bytes()
    img = image_bytes()
    r = client.put("/v1/tasks/dogs", content=v1, headers=AUTH)
    assert r.status_code == 201 and r.json()["version"] == 1 and r.json()["changed"] is True
    assert client.post("/v1/tasks/dogs/predict", content=img).json()["pack_version"] == "1"
    assert client.put("/v1/tasks/dogs", content=v1, headers=AUTH).json()["changed"] is False
    r = client.put("/v1/tasks/dogs", content=v2, headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == 2
    assert client.post("/v1/tasks/dogs/predict", content=img).json()["pack_version"] == "2"
    r = client.post("/v1/tasks/dogs/rollback", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["changed"] is True
    body = client.post("/v1/tasks/dogs/predict", content=img).json()
    assert (body["version"], body["pack_version"]) == (1, "1")
    assert client.post("/v1/tasks/dogs/rollback", json={"version": 9}, headers=AUTH).json()["error"] == \
        "version_not_found"
    assert client.delete("/v1/tasks/dogs", headers=AUTH).status_code == 204
    r = client.post("/v1/tasks/dogs/predict", content=img)
    assert r.status_code == 404 and r.json()["error"] == "task_not_found"


def test_mutations_need_the_token(client, store, make_pack) -> None:
    pack = make_pack("t1").to_bytes()
    store.register("t1", pack)
    for method, path, kw in [("put", "/v1/tasks/t1", {"content": pack}), ("delete", "/v1/tasks/t1", {}),
                             ("post", "/v1/tasks/t1/rollback", {"json": {"version": 1}})]:
        r = getattr(client, method)(path, **kw)
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized"), path
        r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}, **kw)
        assert (r.status_code, r.json()["error"]) == (403, "forbidden"), path
    assert client.get("/v1/tasks/t1").status_code == 200  # reading needs no token


def test_open_mode_needs_no_token(serve, make_pack) -> None:
    with serve(token=None, allow_open=True, host="127.0.0.1") as c:
        assert c.put("/v1/tasks/t1", content=make_pack("t1").to_bytes()).status_code == 201


def test_prefetch_and_next_task_hint(client, store, make_pack) -> None:
    store.register("t1", make_pack("t1").to_bytes())
    store.register("t2", make_pack("t2", seed=3).to_bytes())
    assert client.post("/v1/tasks/t1/prefetch").status_code == 204
    assert client.post("/v1/tasks/nope/prefetch").status_code == 404
    client.post("/v1/tasks/t1/predict", content=image_bytes(), headers={"X-NetTailor-Next-Task": "t2"})
    for _ in range(100):
        if "t2" in client.app.state.cache.cached_tasks():
            break
        import time

        time.sleep(0.02)
    assert set(client.app.state.cache.cached_tasks()) == {"t1", "t2"}


def test_operations_endpoints(client, store, make_pack) -> None:
    store.register("t1", make_pack("t1").to_bytes())
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    client.post("/v1/tasks/t1/predict", content=image_bytes())
    client.post("/v1/tasks/t1/predict", content=image_bytes())
    text = client.get("/metrics").text
    for name in ("nettailor_requests_total{endpoint=\"predict\",outcome=\"ok\",task=\"t1\"} 2.0",
                 "nettailor_cache_hits_total 1.0", "nettailor_cache_misses_total 1.0",
                 'nettailor_pack_load_seconds_count{source="store"} 1.0', "nettailor_queue_depth",
                 "nettailor_batch_size_bucket",
                 "nettailor_batch_mixed_share", "nettailor_request_latency_seconds_bucket",
                 "nettailor_cache_evictions_total"):
        assert name in text, name


def test_openapi_documents_bodies_and_errors(client) -> None:
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in ("Prediction", "BatchPrediction", "MultiPrediction", "TaskSummary", "TaskDetail", "Registered",
                 "ErrorBody", "RollbackRequest", "Readiness"):
        assert name in schemas, name
    predict = doc["paths"]["/v1/tasks/{task_id}/predict"]["post"]
    assert {"multipart/form-data", "image/png"} <= set(predict["requestBody"]["content"])
    assert predict["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    put = doc["paths"]["/v1/tasks/{task_id}"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"] and "201" in put["responses"]
    assert put["security"]
    assert client.get("/docs").status_code == 200


def test_photos_are_turned_upright_by_their_exif_orientation(client, store, make_pack) -> None:
    from tests.exif_images import rotated_jpeg, upright_png

    store.register("digits", make_pack(num_classes=5).to_bytes())
    jpeg = rotated_jpeg(6)

    def probs(img: bytes) -> list[float]:
        r = client.post("/v1/tasks/digits/predict?top_k=5", content=img)
        assert r.status_code == 200, r.text
        return [p["prob"] for p in sorted(r.json()["predictions"], key=lambda p: p["index"])]

    assert probs(jpeg) == probs(upright_png(jpeg))
    assert probs(jpeg) != probs(upright_png(jpeg, apply_exif=False))
