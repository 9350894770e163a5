"""The Open Inference Protocol from the real client library: tritonclient.http against a real uvicorn.

Every call is made by ``tritonclient.http.InferenceServerClient`` with no adapter code beyond building
the inputs, and the answers agree with /v1 on the same images.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from blockstore import Backbone, DirStore, Plan, Preprocess, TailoredNet, TaskPack
from blockstore.testing import randomize

from .conftest import AUTH, TOKEN, image_bytes
from .test_replicas import uvicorn_server

tc = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

CLASSES = 4


def _pack(backbone: Backbone, task_id: str, seed: int, pre: Preprocess) -> TaskPack:
    net = randomize(TailoredNet(backbone, Plan.full(backbone.spec, 3, bottleneck=backbone.bottleneck), CLASSES), seed)
    return TaskPack.from_net(net, task_id, [f"{task_id}-{i}" for i in range(CLASSES)], pre, version=f"p{seed}")


@dataclass
class Live:
    url: str
    store: DirStore
    client: tc.InferenceServerClient


@pytest.fixture(scope="module")
def live(backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("v2-store")
    store = DirStore(root, poll_interval=0.05)
    store.put_backbone(backbone.to_bytes())
    grey, colour = Preprocess(size=32), Preprocess(size=32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), channels=3)
    for seed in (1, 2):  # versions 1 and 2 of a grey task
        store.register("digits", _pack(backbone, "digits", seed, grey).to_bytes())
    store.register("colour", _pack(backbone, "colour", 3, colour).to_bytes())
    with uvicorn_server(str(root)) as url:
        client = tc.InferenceServerClient(url.removeprefix("http://"))
        try:
            yield Live(url, store, client)
        finally:
            client.close()


def _images(n: int) -> list[bytes]:
    return [image_bytes("PNG" if i % 2 else "JPEG", seed=i) for i in range(n)]


def _bytes_input(blobs: list[bytes]) -> tc.InferInput:
    inp = tc.InferInput("image", [len(blobs)], "BYTES")
    inp.set_data_from_numpy(np.array(blobs, dtype=np.object_))
    return inp


def _v1_probs(url: str, task: str, blobs: list[bytes], **query: object) -> tuple[np.ndarray, list[list[str]], int]:
    r = httpx.post(f"{url}/v1/tasks/{task}/predict_batch", params={"top_k": CLASSES, **query},
                   files=[("files", (f"{i}.img", b, "application/octet-stream")) for i, b in enumerate(blobs)])
    assert r.status_code == 200, r.text
    probs = np.zeros((len(blobs), CLASSES), dtype=np.float32)
    for row, labels in zip(probs, r.json()["results"]):
        for lab in labels:
            row[lab["index"]] = lab["prob"]
    return probs, [[lab["label"] for lab in labels] for labels in r.json()["results"]], r.json()["version"]


def _preprocessed(blobs: list[bytes], pre: Preprocess) -> np.ndarray:
    import torch

    xs = [pre.normalize(pre.to_uint8(Image.open(io.BytesIO(b)))[None])[0] for b in blobs]
    return torch.stack(xs).numpy()


def test_health_and_metadata(live: Live) -> None:
    c = live.client
    assert c.is_server_live() and c.is_server_ready()
    meta = c.get_server_metadata()
    assert meta["name"] == "nettailor" and "binary_tensor_data" in meta["extensions"]
    m = c.get_model_metadata("digits")
    assert m["name"] == "digits" and m["versions"] == ["1", "2"] and m["parameters"]["version"] == 2
    assert {(t["name"], t["datatype"]) for t in m["inputs"]} == {("image", "BYTES"), ("input", "FP32")}
    fp32 = next(t for t in m["inputs"] if t["name"] == "input")
    assert fp32["shape"] == [-1, 3, 32, 32]
    assert (fp32["parameters"]["mean"], fp32["parameters"]["std"]) == ([0.5], [0.5])
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in m["outputs"]} == {
        ("probabilities", "FP32", (-1, CLASSES)), ("labels", "BYTES", (-1, -1))}
    assert c.get_model_metadata("digits", model_version="1")["parameters"]["pack_version"] == "p1"
    assert c.is_model_ready("digits") and c.is_model_ready("digits", model_version="1")
    assert not c.is_model_ready("nope") and not c.is_model_ready("digits", model_version="9")
    with pytest.raises(InferenceServerException, match="not registered") as e:
        c.get_model_metadata("nope")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False])
def test_infer_bytes_agrees_with_v1(live: Live, binary: bool) -> None:
    blobs = _images(3)
    outputs = [tc.InferRequestedOutput("probabilities", binary_data=binary),
               tc.InferRequestedOutput("labels", binary_data=binary)]
    res = live.client.infer("digits", [_bytes_input(blobs)], outputs=outputs, parameters={"top_k": 2})
    probs, labels = res.as_numpy("probabilities"), res.as_numpy("labels")
    assert probs.dtype == np.float32 and probs.shape == (3, CLASSES) and labels.shape == (3, 2)
    ref, ref_labels, ref_version = _v1_probs(live.url, "digits", blobs)
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    got = [[s.decode() if isinstance(s, bytes) else s for s in row] for row in labels]  # JSON answers str
    assert got == [row[:2] for row in ref_labels]
    assert res.get_response()["model_version"] == str(ref_version) == "2"


def test_infer_fp32_matches_bytes(live: Live) -> None:
    blobs = _images(2)
    for task, pre in (("digits", Preprocess(size=32)),
                      ("colour", Preprocess(size=32, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), channels=3))):
        x = _preprocessed(blobs, pre)
        for binary in (True, False):
            inp = tc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            res = live.client.infer(task, [inp])  # default outputs: every output, binary
            ref, _, _ = _v1_probs(live.url, task, blobs)
            np.testing.assert_allclose(res.as_numpy("probabilities"), ref, atol=1e-6)
    grey = _preprocessed(blobs, Preprocess(size=32))[:, :1]  # a grey task also takes one channel
    inp = tc.InferInput("input", list(grey.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(grey))
    np.testing.assert_allclose(live.client.infer("digits", [inp]).as_numpy("probabilities"),
                               _v1_probs(live.url, "digits", blobs)[0], atol=1e-6)


def test_versioned_infer_and_aliases(live: Live) -> None:
    blobs = _images(2)
    res = live.client.infer("digits", [_bytes_input(blobs)], model_version="1")
    assert res.get_response()["model_version"] == "1"
    ref, _, version = _v1_probs(live.url, "digits", blobs, version=1)
    assert version == 1
    np.testing.assert_allclose(res.as_numpy("probabilities"), ref, atol=1e-6)
    assert not np.allclose(ref, _v1_probs(live.url, "digits", blobs)[0], atol=1e-3)  # version 2 differs
    r = httpx.put(f"{live.url}/v1/tasks/digits/aliases/production", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    res = live.client.infer("digits", [_bytes_input(blobs)], model_version="production")
    assert res.get_response()["model_version"] == "1"
    assert live.client.get_model_metadata("digits")["parameters"]["aliases"] == {"production": 1}
    with pytest.raises(InferenceServerException, match=r"no version 7 \(has \[1, 2\]\)") as e:
        live.client.infer("digits", [_bytes_input(blobs)], model_version="7")
    assert e.value.status() == "404"


def test_load_unload_and_index(live: Live) -> None:
    c = live.client
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with pytest.raises(InferenceServerException, match="operator token") as e:
        c.load_model("colour")
    assert e.value.status() == "401"
    c.unload_model("colour", headers=auth)
    index = {m["name"]: m for m in c.get_model_repository_index()}
    assert index["colour"]["state"] == "UNAVAILABLE" and index["digits"]["version"] == "2"
    c.load_model("colour", headers=auth)
    assert {m["name"]: m["state"] for m in c.get_model_repository_index()}["colour"] == "READY"
    assert "colour" in {m["name"] for m in c.get_model_repository_index(query_params=None)}
    c.unload_model("colour", headers=auth)
    assert {m["name"]: m["state"] for m in c.get_model_repository_index()}["colour"] == "UNAVAILABLE"
    with pytest.raises(InferenceServerException) as e:
        c.unload_model("nope", headers=auth)
    assert e.value.status() == "404"


def test_bad_requests_are_400_with_the_protocol_error_shape(live: Live) -> None:
    c = live.client
    wrong = tc.InferInput("pixels", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="unknown input 'pixels'") as e:
        c.infer("digits", [wrong])
    assert e.value.status() == "400"
    with pytest.raises(InferenceServerException, match="JPEG, PNG or WebP") as e:
        c.infer("digits", [_bytes_input([b"not an image"])])
    assert e.value.status() == "415"
    bad = tc.InferInput("input", [1, 3, 16, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 16, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"float32 \[N, 3, 32, 32\]") as e:
        c.infer("digits", [bad])
    assert e.value.status() == "400"
    one = b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}'
    for method, path, body in (("POST", "/v2/models/digits/infer", b"{"),
                               ("POST", "/v2/models/digits/infer", b'{"inputs": []}'),
                               ("GET", "/v2/nowhere", None), ("POST", "/v2/models/a%20b/infer", one),
                               ("POST", "/v2/models/digits/versions/0x/infer", one),
                               ("POST", "/v2/repository/index", b'{"ready": "maybe"}'),
                               ("GET", "/v2/models/digits/infer", None)):
        r = httpx.request(method, live.url + path, content=body)
        assert r.status_code in (400, 404) and set(r.json()) == {"error"}, (path, r.text)
    r = httpx.post(f"{live.url}/v1/tasks/nope/predict", content=image_bytes())  # /v1 keeps its own shape
    assert r.status_code == 404 and r.json()["error"] == "task_not_found" and "detail" in r.json()
