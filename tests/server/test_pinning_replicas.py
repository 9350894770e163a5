"""A robot pinned to version 3 keeps getting version-3 answers while an operator registers versions 4 and
5, across two uvicorn replicas sharing one real Redis; an alias move reaches the other replica."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from nettailor_client import Client

from .conftest import EVENTUALLY_S, TOKEN, image_bytes
from .test_api import _reference_probs
from .test_replicas import _url, uvicorn_server, wait_for_version

tc = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")

pytestmark = pytest.mark.redis


def _alias_version_within(client: Client, task: str, alias: str, want: int, seconds: float = EVENTUALLY_S) -> None:
    t0 = time.monotonic()
    while client.predict(task, image_bytes(), alias=alias).version != want:
        assert time.monotonic() - t0 < seconds, f"{alias} still does not answer with version {want}"
        time.sleep(0.02)


def test_a_pinned_robot_keeps_version_3_across_two_replicas(redis_store, backbone, make_pack) -> None:
    redis_store.put_backbone(backbone.to_bytes())
    packs = {v: make_pack("nav", num_classes=4, seed=v, version=f"p{v}") for v in range(1, 6)}
    for v in (1, 2, 3):
        redis_store.register("nav", packs[v].to_bytes())
    img = image_bytes()
    ref3 = _reference_probs(packs[3], backbone, img).numpy()
    with uvicorn_server(_url(redis_store)) as a, uvicorn_server(_url(redis_store)) as b, \
            Client(a, token=TOKEN, retries=0) as operator, Client(b, retries=0) as robot_http:
        operator.set_alias("nav", "production", 3)
        triton = tc.InferenceServerClient(b.removeprefix("http://"))
        blob = tc.InferInput("image", [1], "BYTES")
        blob.set_data_from_numpy(np.array([img], dtype=np.object_))

        def robot_sees_version_3() -> None:
            probs = {}
            with robot_http.task("nav", version=3) as pinned:
                p = pinned.predict(img, top_k=4)
                assert (p.version, p.pack_version) == (3, "p3")
                probs["v1-version"] = p
            p = robot_http.predict("nav", img, top_k=4, alias="production")
            assert (p.version, p.pack_version) == (3, "p3")
            probs["v1-alias"] = p
            for label, pred in probs.items():
                got = np.zeros(4, dtype=np.float32)
                for lab in pred.predictions:
                    got[lab.index] = lab.prob
                np.testing.assert_allclose(got, ref3, atol=1e-4, err_msg=label)
            res = triton.infer("nav", [blob], model_version="3")
            assert res.get_response()["model_version"] == "3"
            np.testing.assert_allclose(res.as_numpy("probabilities")[0], ref3, atol=1e-4)

        robot_sees_version_3()
        for v in (4, 5):  # the operator registers through replica A while the robot runs on B
            reg = operator.register("nav", packs[v].to_bytes())
            assert reg.version == v
            robot_sees_version_3()
            wait_for_version(b, "nav", v)  # unpinned requests move on
            robot_sees_version_3()
        triton.close()
        operator.set_alias("nav", "production", 5)  # through A; B follows on the store event
        _alias_version_within(robot_http, "nav", "production", 5)
        detail = httpx.get(f"{b}/v1/tasks/nav").json()
        assert detail["aliases"] == {"production": 5}
        assert [(c["alias"], c["version"]) for c in detail["alias_log"]] == [("production", 3), ("production", 5)]
