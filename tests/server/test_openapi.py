"""The documentation is the behaviour: walk the OpenAPI document and make the server send every status
it documents, and nothing else; plus the framework corners (405, empty ids, bodies it cannot parse)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from blockstore import TASK_ID_PATTERN, DirStore
from server.app import create_app

from .conftest import AUTH, TOKEN, image_bytes

Recipe = Callable[[], object]
WRONG = {"Authorization": "Bearer wrong"}


@pytest.fixture
def apps(serve, store, make_pack, other_backbone, tmp_path):  # type: ignore[no-untyped-def]
    """A ready server with small limits, and one on an empty store (not ready: its 503s)."""
    store.register("t1", make_pack("t1").to_bytes())
    rec, _ = store.register("bad", make_pack("bad", seed=4).to_bytes())
    path = store.root / "packs" / f"{rec.sha256}.pack"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    empty = DirStore(tmp_path / "empty")
    settings = {"max_upload_bytes": 64 * 1024, "max_pack_bytes": 2 * 1024 * 1024}
    with serve(**settings) as ready, TestClient(create_app(serve_settings(empty, settings)),
                                                raise_server_exceptions=False) as waiting:
        yield ready, waiting, make_pack, other_backbone


def serve_settings(store: DirStore, extra: dict):  # type: ignore[no-untyped-def]
    from server.settings import Settings

    return Settings(store=str(store.root), token=TOKEN, device="cpu", backbone_poll_s=60, **extra)


def _recipes(ready: TestClient, waiting: TestClient, make_pack, other_backbone) -> dict:  # type: ignore[no-untyped-def]
    img, big = image_bytes(), b"\x89PNG\r\n\x1a\n" + b"\0" * (100 * 1024)
    png = {"Content-Type": "image/png"}
    files = [("files", ("a.png", img, "image/png"))]
    new = make_pack("fresh", seed=9).to_bytes()
    bad_multipart = {"Content-Type": "multipart/form-data; boundary=xyz"}
    return {
        ("/v1/tasks/{task_id}/predict", "post"): {
            200: lambda: ready.post("/v1/tasks/t1/predict", content=img, headers=png),
            404: lambda: ready.post("/v1/tasks/nope/predict", content=img),
            413: lambda: ready.post("/v1/tasks/t1/predict", content=big),
            415: lambda: ready.post("/v1/tasks/t1/predict", content=b"hello", headers=png),
            422: lambda: ready.post("/v1/tasks/t1/predict?top_k=0", content=img),
            503: lambda: ready.post("/v1/tasks/bad/predict", content=img),
        },
        ("/v1/tasks/{task_id}/predict_batch", "post"): {
            200: lambda: ready.post("/v1/tasks/t1/predict_batch", files=files),
            404: lambda: ready.post("/v1/tasks/nope/predict_batch", files=files),
            413: lambda: ready.post("/v1/tasks/t1/predict_batch", files=[("files", ("a.png", big, "image/png"))]),
            415: lambda: ready.post("/v1/tasks/t1/predict_batch", content=img, headers=png),
            422: lambda: ready.post("/v1/tasks/t1/predict_batch", content=b"--xyz\r\nbroken", headers=bad_multipart),
            503: lambda: ready.post("/v1/tasks/bad/predict_batch", files=files),
        },
        ("/v1/predict", "post"): {
            200: lambda: ready.post("/v1/predict?tasks=t1", content=img),
            404: lambda: ready.post("/v1/predict?tasks=t1,nope", content=img),
            413: lambda: ready.post("/v1/predict?tasks=t1", content=big),
            415: lambda: ready.post("/v1/predict?tasks=t1", content=b"{}", headers={"Content-Type": "text/plain"}),
            422: lambda: ready.post("/v1/predict", content=img),
            503: lambda: ready.post("/v1/predict?tasks=t1,bad", content=img),
        },
        ("/v1/tasks/{task_id}/prefetch", "post"): {
            204: lambda: ready.post("/v1/tasks/t1/prefetch"),
            404: lambda: ready.post("/v1/tasks/nope/prefetch"),
            422: lambda: ready.post("/v1/tasks/-x/prefetch"),
            503: lambda: ready.post("/v1/tasks/bad/prefetch"),
        },
        ("/v1/tasks", "get"): {
            200: lambda: ready.get("/v1/tasks"),
            503: lambda: waiting.get("/v1/tasks"),
        },
        ("/v1/tasks/{task_id}", "get"): {
            200: lambda: ready.get("/v1/tasks/t1"),
            404: lambda: ready.get("/v1/tasks/nope"),
            422: lambda: ready.get("/v1/tasks/-x"),
            503: lambda: ready.get("/v1/tasks/bad"),
        },
        ("/v1/tasks/{task_id}", "put"): {
            201: lambda: ready.put("/v1/tasks/fresh", content=new, headers=AUTH),
            200: lambda: ready.put("/v1/tasks/fresh", content=new, headers=AUTH),
            401: lambda: ready.put("/v1/tasks/fresh", content=new),
            403: lambda: ready.put("/v1/tasks/fresh", content=new, headers={"Authorization": "Bearer no"}),
            409: lambda: ready.put("/v1/tasks/o", content=make_pack("o", bb=other_backbone).to_bytes(), headers=AUTH),
            413: lambda: ready.put("/v1/tasks/fresh", content=b"x" * (3 << 20), headers=AUTH),
            422: lambda: ready.put("/v1/tasks/fresh", content=b"garbage", headers=AUTH),
            503: lambda: waiting.put("/v1/tasks/fresh", content=new, headers=AUTH),
        },
        ("/v1/tasks/{task_id}", "delete"): {
            204: lambda: ready.delete("/v1/tasks/fresh", headers=AUTH),
            401: lambda: ready.delete("/v1/tasks/t1"),
            403: lambda: ready.delete("/v1/tasks/t1", headers={"Authorization": "Bearer no"}),
            404: lambda: ready.delete("/v1/tasks/nope", headers=AUTH),
            422: lambda: ready.delete("/v1/tasks/-x", headers=AUTH),
            503: lambda: waiting.delete("/v1/tasks/t1", headers=AUTH),
        },
        ("/v1/tasks/{task_id}/rollback", "post"): {
            200: lambda: ready.post("/v1/tasks/t1/rollback", json={"version": 1}, headers=AUTH),
            401: lambda: ready.post("/v1/tasks/t1/rollback", json={"version": 1}),
            403: lambda: ready.post("/v1/tasks/t1/rollback", json={"version": 1}, headers=WRONG),
            404: lambda: ready.post("/v1/tasks/t1/rollback", json={"version": 7}, headers=AUTH),
            422: lambda: ready.post("/v1/tasks/t1/rollback", content=b'{"version": "\xff"}', headers=AUTH),
            503: lambda: waiting.post("/v1/tasks/t1/rollback", json={"version": 1}, headers=AUTH),
        },
        ("/healthz", "get"): {200: lambda: waiting.get("/healthz")},
        ("/readyz", "get"): {200: lambda: ready.get("/readyz"), 503: lambda: waiting.get("/readyz")},
        ("/metrics", "get"): {200: lambda: waiting.get("/metrics")},
    }


def test_every_documented_status_is_sent_and_nothing_else(apps) -> None:
    ready, waiting, make_pack, other_backbone = apps
    doc = ready.get("/openapi.json").json()
    documented = {(path, method): {int(s) for s in op["responses"]}
                  for path, ops in doc["paths"].items() for method, op in ops.items()}
    recipes = _recipes(ready, waiting, make_pack, other_backbone)
    assert set(recipes) == set(documented), "every operation has recipes, and only documented ones"
    for op, by_status in recipes.items():
        assert set(by_status) == documented[op], f"{op}: documented {sorted(documented[op])}"
        for status, call in by_status.items():
            r = call()
            assert r.status_code == status, (op, status, r.text[:300])  # type: ignore[attr-defined]
            if status >= 400 and op[0] != "/readyz":  # /readyz answers its Readiness body
                body = r.json()  # type: ignore[attr-defined]
                assert set(body) == {"error", "detail"} and body["detail"], (op, body)
            if status == 503:
                assert r.headers.get("Retry-After"), op  # type: ignore[attr-defined]
    assert "429" not in ready.get("/openapi.json").text  # never sent, so never documented


def test_the_task_id_pattern_is_in_the_schema(client) -> None:
    doc = client.get("/openapi.json").json()
    params = [p for ops in doc["paths"].values() for op in ops.values() for p in op.get("parameters", [])
              if p["name"] == "task_id"]
    assert len(params) == 7 and all(p["schema"]["pattern"] == TASK_ID_PATTERN for p in params)


def test_framework_corners_answer_documented_errors(client, store, make_pack) -> None:
    store.register("t1", make_pack("t1").to_bytes())
    r = client.patch("/v1/tasks/t1")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert r.headers["Allow"] == "DELETE, GET, PUT"
    assert client.post("/v1/tasks").headers["Allow"] == "GET"
    for method in ("put", "get", "delete"):  # an empty id is an unknown path, never a redirect
        r = client.request(method.upper(), "/v1/tasks/", headers=AUTH, follow_redirects=False)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, r.status_code)
    img = image_bytes()
    many = [("files", (f"{i}.png", img, "image/png")) for i in range(40)]  # max_batch is 32
    r = client.post("/v1/tasks/t1/predict_batch", files=many)
    assert (r.status_code, r.json()["error"]) == (422, "validation_error") and "32" in r.json()["detail"]
    for body in (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--", b"no boundary here"):
        r = client.post("/v1/tasks/t1/predict", content=body,
                        headers={"Content-Type": "multipart/form-data; boundary=xyz"})
        assert (r.status_code, r.json()["error"]) == (422, "bad_image"), r.text
    r = client.post("/v1/tasks/t1/predict", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert (r.status_code, r.json()["error"]) == (422, "bad_image"), r.text
    r = client.post("/v1/tasks/t1/rollback", content=b"\xff\xfe{", headers={**AUTH, "Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (422, "validation_error"), r.text
