"""Every method of the sync Client, against the real server over TCP."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nettailor_client import (
    BatchPrediction,
    Client,
    MultiPrediction,
    Prediction,
    Registered,
    TaskDetail,
    TaskNotFound,
    TaskSummary,
)

from .conftest import TASKS, TOKEN, png


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (32, 32), 128).save(buf, format=fmt)
    return buf.getvalue()


def _check(p: Prediction, task_id: str, top_k: int) -> None:
    assert isinstance(p, Prediction)
    assert p.task_id == task_id
    assert p.version >= 1
    assert len(p.predictions) == min(top_k, TASKS[task_id])
    probs = [label.prob for label in p.predictions]
    assert probs == sorted(probs, reverse=True)
    assert 0.0 <= sum(probs) <= 1.0 + 1e-5
    assert p.top.label == f"{task_id}-{p.top.index}"
    assert p.timings_ms.total >= p.timings_ms.infer >= 0.0


def test_health(client: Client) -> None:
    assert client.health()["status"] == "ok"


def test_list_tasks(client: Client) -> None:
    tasks = {t.task_id: t for t in client.list_tasks()}
    assert set(TASKS) <= set(tasks)
    for task_id, n in TASKS.items():
        t = tasks[task_id]
        assert isinstance(t, TaskSummary)
        assert t.num_classes == n
        assert 0 < t.blocks_kept <= t.blocks_total
        assert t.flops > 0 and t.backbone_flops > 0  # an unpruned plan with proxies costs more than the backbone


def test_get_task(client: Client) -> None:
    t = client.get_task("beta")
    assert isinstance(t, TaskDetail)
    assert t.labels == [f"beta-{i}" for i in range(4)]
    assert len(t.sha256) == 64
    assert [h.version for h in t.history] == [t.version]
    assert t.history[0].sha256 == t.sha256


@pytest.mark.parametrize("kind", ["path", "bytes", "file", "pil", "pil-grey", "numpy-rgb", "numpy-grey", "jpeg",
                                  "webp"])
def test_predict_image_kinds(client: Client, tmp_path, kind: str) -> None:
    data = png()
    image: object
    if kind == "path":
        image = tmp_path / "frame.png"
        image.write_bytes(data)
    elif kind == "bytes":
        image = data
    elif kind == "file":
        image = io.BytesIO(data)
    elif kind == "pil":
        image = Image.open(io.BytesIO(data))
    elif kind == "pil-grey":
        image = Image.new("L", (32, 32), 7)
    elif kind == "numpy-rgb":
        image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    elif kind == "numpy-grey":
        image = np.zeros((40, 30), dtype=np.uint8)
    elif kind == "jpeg":
        image = _encoded("JPEG")
    else:
        image = _encoded("WEBP")
    _check(client.predict("alpha", image), "alpha", 5)


def test_predict_top_k(client: Client) -> None:
    _check(client.predict("gamma", png(), top_k=2), "gamma", 2)


def test_predict_batch(client: Client) -> None:
    out = client.predict_batch("beta", [png(seed=i) for i in range(3)], top_k=2)
    assert isinstance(out, BatchPrediction)
    assert out.task_id == "beta"
    assert len(out.results) == 3
    assert all(len(r) == 2 for r in out.results)


@pytest.mark.parametrize("tasks", [["alpha", "gamma"], "alpha,beta,gamma"])
def test_predict_multi(client: Client, tasks) -> None:
    out = client.predict_multi(png(), tasks, top_k=1)
    assert isinstance(out, MultiPrediction)
    names = tasks.split(",") if isinstance(tasks, str) else tasks
    assert set(out.results) == set(names)
    for name in names:
        _check(out[name], name, 1)


def test_prefetch(client: Client) -> None:
    assert client.prefetch("gamma") is None


def test_register_update_rollback_delete(live_server, client: Client, tmp_path) -> None:
    v1 = live_server.make_pack("lifecycle", 3, version="1.0").to_bytes()
    v2 = live_server.make_pack("lifecycle", 3, version="2.0").to_bytes()
    path = tmp_path / "v1.pack"
    path.write_bytes(v1)

    reg = client.register("lifecycle", path)
    assert isinstance(reg, Registered)
    assert (reg.task_id, reg.version, reg.changed) == ("lifecycle", 1, True)
    assert client.register("lifecycle", v1).changed is False  # same bytes: a no-op

    with open(tmp_path / "v2.pack", "wb") as f:
        f.write(v2)
    with open(tmp_path / "v2.pack", "rb") as f:
        reg2 = client.register("lifecycle", f)
    assert (reg2.version, reg2.changed) == (2, True)
    assert client.predict("lifecycle", png()).pack_version == "2.0"

    detail = client.get_task("lifecycle")
    assert [h.version for h in detail.history] == [1, 2]
    assert detail.version == 2

    back = client.rollback("lifecycle", 1)
    assert (back.version, back.sha256) == (1, reg.sha256)
    p = client.predict("lifecycle", png())
    assert (p.version, p.pack_version) == (1, "1.0")

    assert client.delete("lifecycle") is None
    assert "lifecycle" not in {t.task_id for t in client.list_tasks()}
    with pytest.raises(TaskNotFound):
        client.predict("lifecycle", png())


def test_token_from_environment(live_server, monkeypatch) -> None:
    monkeypatch.setenv("NETTAILOR_URL", live_server.url)
    monkeypatch.setenv("NETTAILOR_TOKEN", TOKEN)
    with Client() as c:
        assert c.base_url == live_server.url
        reg = c.register("envtoken", live_server.make_pack("envtoken", 2).to_bytes())
        assert reg.changed
        c.delete("envtoken")
