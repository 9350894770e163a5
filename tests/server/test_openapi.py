"""The documentation is the behaviour: walk the OpenAPI document and make the server send every status
it documents, and nothing else; plus the framework corners (405, empty ids, bodies it cannot parse)."""

from __future__ import annotations

import base64
import functools
import json
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
        ("/v1/tasks/{task_id}/aliases/{alias}", "put"): {
            200: lambda: ready.put("/v1/tasks/t1/aliases/prod", json={"version": 1}, headers=AUTH),
            401: lambda: ready.put("/v1/tasks/t1/aliases/prod", json={"version": 1}),
            403: lambda: ready.put("/v1/tasks/t1/aliases/prod", json={"version": 1}, headers=WRONG),
            404: lambda: ready.put("/v1/tasks/t1/aliases/prod", json={"version": 7}, headers=AUTH),
            422: lambda: ready.put("/v1/tasks/t1/aliases/0x", json={"version": 1}, headers=AUTH),
            503: lambda: waiting.put("/v1/tasks/t1/aliases/prod", json={"version": 1}, headers=AUTH),
        },
        ("/v1/tasks/{task_id}/aliases/{alias}", "delete"): {
            204: lambda: ready.delete("/v1/tasks/t1/aliases/prod", headers=AUTH),
            401: lambda: ready.delete("/v1/tasks/t1/aliases/prod"),
            403: lambda: ready.delete("/v1/tasks/t1/aliases/prod", headers=WRONG),
            404: lambda: ready.delete("/v1/tasks/t1/aliases/nope", headers=AUTH),
            422: lambda: ready.delete("/v1/tasks/t1/aliases/0x", headers=AUTH),
            503: lambda: waiting.delete("/v1/tasks/t1/aliases/prod", headers=AUTH),
        },
        **_v2_recipes(ready, waiting),
        ("/healthz", "get"): {200: lambda: waiting.get("/healthz")},
        ("/readyz", "get"): {200: lambda: ready.get("/readyz"), 503: lambda: waiting.get("/readyz")},
        ("/metrics", "get"): {200: lambda: waiting.get("/metrics")},
    }


def _v2_recipes(ready: TestClient, waiting: TestClient) -> dict:
    """The Open Inference Protocol's operations (errors ``{"error": text}``, 422 sent as 400)."""
    infer = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "data": [base64.b64encode(image_bytes()).decode()]}]}).encode()
    gzip = {"Content-Encoding": "gzip"}
    big = b"x" * (4 << 20)  # over max_upload_bytes * max_batch + 1 MiB
    out: dict = {
        ("/v2/health/live", "get"): {200: lambda: waiting.get("/v2/health/live")},
        ("/v2/health/ready", "get"): {200: lambda: ready.get("/v2/health/ready"),
                                      503: lambda: waiting.get("/v2/health/ready")},
        ("/v2", "get"): {200: lambda: waiting.get("/v2")},
        ("/v2/repository/index", "post"): {
            200: lambda: ready.post("/v2/repository/index", json={}),
            400: lambda: ready.post("/v2/repository/index", json={"ready": "maybe"}),
            503: lambda: waiting.post("/v2/repository/index", json={}),
        },
    }
    for suffix in ("", "/ready"):
        for path, v in (("/v2/models/{task}", ""), ("/v2/models/{task}/versions/{version}", "/versions/1")):
            bad = "/v2/models/-x" if not v else "/v2/models/t1/versions/0x"  # a bad id, a bad alias
            nope = "/v2/models/nope" if not v else "/v2/models/t1/versions/7"
            out[(path + suffix, "get")] = {
                200: functools.partial(ready.get, f"/v2/models/t1{v}{suffix}"),
                400: functools.partial(ready.get, bad + suffix),
                404: functools.partial(ready.get, nope + suffix),
                503: functools.partial(waiting.get, f"/v2/models/t1{v}{suffix}"),
            }
    for path, v in (("/v2/models/{task}/infer", ""), ("/v2/models/{task}/versions/{version}/infer", "/versions/1")):
        url = f"/v2/models/t1{v}/infer"
        out[(path, "post")] = {
            200: functools.partial(ready.post, url, content=infer),
            400: functools.partial(ready.post, url, content=b'{"inputs": []}'),
            404: functools.partial(ready.post, f"/v2/models/nope{v}/infer", content=infer),
            413: functools.partial(ready.post, url, content=big),
            415: functools.partial(ready.post, url, content=infer, headers=gzip),
            503: functools.partial(ready.post, f"/v2/models/bad{v}/infer", content=infer),
        }
    for verb in ("load", "unload"):
        url = f"/v2/repository/models/{{}}/{verb}"
        out[(url.format("{task}"), "post")] = {
            200: functools.partial(ready.post, url.format("t1"), headers=AUTH),
            400: functools.partial(ready.post, url.format("-x"), headers=AUTH),
            401: functools.partial(ready.post, url.format("t1")),
            403: functools.partial(ready.post, url.format("t1"), headers=WRONG),
            404: functools.partial(ready.post, url.format("nope"), headers=AUTH),
            503: functools.partial(waiting.post, url.format("t1"), headers=AUTH),
        }
    return out


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
            if status >= 400 and op[0] not in ("/readyz", "/v2/health/ready"):  # these answer Readiness
                body = r.json()  # type: ignore[attr-defined]
                if op[0].startswith("/v2"):  # the protocol's error shape
                    assert set(body) == {"error"} and body["error"], (op, body)
                else:
                    assert set(body) == {"error", "detail"} and body["detail"], (op, body)
            if status == 503:
                assert r.headers.get("Retry-After"), op  # type: ignore[attr-defined]
    assert "429" not in ready.get("/openapi.json").text  # never sent, so never documented


def test_the_task_id_pattern_is_in_the_schema(client) -> None:
    doc = client.get("/openapi.json").json()
    params = [p for ops in doc["paths"].values() for op in ops.values() for p in op.get("parameters", [])
              if p["name"] == "task_id"]
    assert len(params) == 9 and all(p["schema"]["pattern"] == TASK_ID_PATTERN for p in params)


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


def test_no_route_hops_to_a_thread_for_a_dependency_or_its_endpoint(make_settings) -> None:  # type: ignore[no-untyped-def]
    """FastAPI runs a plain ``def`` dependency or endpoint in a worker thread: a thread-pool hop per
    request, which cost the event loop about 15% of its busy time on predictions (server/deps.py)."""
    import inspect

    from fastapi.routing import APIRoute

    def is_async(call: object) -> bool:
        # a function, or an instance whose __call__ is (fastapi.security.HTTPBearer)
        return inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)

    def sync_calls(dependant) -> list[str]:  # type: ignore[no-untyped-def]
        own = [] if dependant.call is None or is_async(dependant.call) else [getattr(dependant.call, "__qualname__",
                                                                                       repr(dependant.call))]
        return own + [name for d in dependant.dependencies for name in sync_calls(d)]

    def api_routes(routes) -> list[APIRoute]:  # type: ignore[no-untyped-def]
        out: list[APIRoute] = []
        for r in routes:
            if isinstance(r, APIRoute):
                out.append(r)
            inner = getattr(r, "original_router", None)  # an included router (FastAPI 0.165)
            if inner is not None:
                out += api_routes(inner.routes)
        return out

    routes = api_routes(create_app(make_settings()).routes)
    assert len(routes) > 20
    offenders = {r.path: calls for r in routes if (calls := sync_calls(r.dependant))}
    assert offenders == {}
