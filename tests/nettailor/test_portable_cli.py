"""``nettailor export`` and ``nettailor predict``: a task with no server, checked against the server's
executor on real MNIST digits."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from blockstore import DirStore, Preprocess, TailoredNet, TaskPack
from blockstore.testing import random_plan, randomize
from nettailor.cli import main
from server.local import LocalPredictor
from trainer.datasets import _read_idx, mnist_dir

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits() -> list[bytes]:
    """Twelve real MNIST test digits as PNG files."""
    out = []
    for a in _read_idx(mnist_dir() / "t10k-images-idx3-ubyte.gz")[:12]:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture
def task(backbone, tmp_path):
    """A task that drops blocks and keeps proxies, with trained-looking tensors, in a store and a file."""
    plan = random_plan(backbone.spec, random.Random(1), keep_block=0.5, keep_proxy=0.5)  # keeps 1, 3, 4
    assert len(plan.blocks_kept) < len(plan.layers)
    net = randomize(TailoredNet(backbone, plan, 10), seed=5)
    pre = Preprocess(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), channels=1)
    pack = TaskPack.from_net(net, "digits", [str(i) for i in range(10)], pre, version="7")
    store = DirStore(tmp_path / "store")
    store.put_backbone(backbone.to_bytes())
    store.register("digits", pack.to_bytes())
    path = tmp_path / "digits.pack"
    path.write_bytes(pack.to_bytes())
    return pack, store, path


def test_export_matches_the_servers_executor_on_real_digits(task, backbone, digits, tmp_path, capsys):
    pack, store, _ = task
    out = tmp_path / "export"
    assert main(["export", "--task", "digits", "--store", str(store.root), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["max_abs_diff_vs_torch"]["onnx"] < 1e-4 and summary["max_abs_diff_vs_torch"]["pt2"] < 1e-4

    model = onnx.load(str(out / "digits.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert (meta["task_id"], meta["version"], meta["size"], meta["channels"]) == ("digits", "7", "32", "1")
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["labels"])[3] == "3"
    assert json.loads(meta["blocks_kept"]) == list(pack.plan.blocks_kept)
    # Only the kept universal blocks travel: no initializer of a dropped block.
    dropped = [l for l in range(1, len(pack.plan.layers) + 1) if l not in pack.plan.blocks_kept]
    names = " ".join(i.name for i in model.graph.initializer)
    assert all(f"block{l}." not in names for l in dropped) and f"block{pack.plan.blocks_kept[0]}." in names

    server = LocalPredictor(pack, backbone).predict(digits, top_k=10)  # the server's decode + executor
    uint8 = torch.stack([pack.preprocess.to_uint8(Image.open(io.BytesIO(d))) for d in digits])
    session = ort.InferenceSession(str(out / "digits.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": uint8.numpy()})[0]
    want = torch.stack([r.logits for r in server]).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    pt2 = torch.export.load(out / "digits.pt2").module()
    assert (pt2(uint8[:1]) - torch.from_numpy(want[:1])).abs().max() < 1e-4  # any batch size


def test_local_predict_answers_like_the_server(task, backbone, digits, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    _, store, path = task
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, d in enumerate(digits):
        (folder / f"{i:02d}.png").write_bytes(d)
    (folder / "05.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert main(["predict", "--pack", str(path), str(folder), "--format", "jsonl", "--top-k", "3",
                 "--batch-size", "5", "--store", str(store.root), "--quiet"]) == 3  # one bad file
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("error") for x in lines] == [None] * 5 + ["bad_image"] + [None] * 6
    app = create_app(Settings(store=str(store.root), token="t", device="cpu"))
    with TestClient(app) as http:
        for x in lines:
            if x.get("error"):
                continue
            with open(x["image"], "rb") as f:
                r = http.post("/v1/tasks/digits/predict?top_k=3", content=f.read()).json()
            assert [p["label"] for p in r["predictions"]] == [p["label"] for p in x["predictions"]]
            assert [p["prob"] for p in r["predictions"]] == pytest.approx([p["prob"] for p in x["predictions"]],
                                                                          abs=1e-6)
    assert main(["predict", "--task", "digits", "--store", str(store.root), str(folder / "00.png"),
                 "--format", "csv", "--top-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith(f"{folder / '00.png'},digits,0,1,")
    assert main(["predict", "--pack", str(tmp_path / "none.pack"), str(folder)]) == 2
    assert main(["predict", "--pack", str(path), str(folder / "missing.png")]) == 2
