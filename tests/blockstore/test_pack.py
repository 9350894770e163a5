"""TaskPack: bit-exact round trips, and every kind of bad bytes refused with the right error."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from blockstore import (
    BackboneMismatch,
    CorruptPack,
    InvalidTaskId,
    LayerPlan,
    Plan,
    Preprocess,
    TailoredNet,
    TaskPack,
    UnsupportedFormat,
    read_pack_info,
    st_io,
)


def _rewrite(data: bytes, meta_update: dict | None = None, tensors_update: dict | None = None) -> bytes:
    tensors, meta = st_io.loads(data)
    meta.update(meta_update or {})
    tensors.update(tensors_update or {})
    return st_io.dumps(tensors, meta)


def test_round_trip_gives_bit_identical_logits(backbone, make_pack):
    pack = make_pack(num_classes=5, seed=7)
    net = pack.build(backbone)
    x = torch.randn(4, 3, 32, 32)
    before = net(x)
    data = pack.to_bytes()
    again = TaskPack.from_bytes(data, backbone_id=backbone.backbone_id)
    assert torch.equal(again.build(backbone)(x), before)
    assert again.to_bytes() == data  # deterministic: equal content, equal bytes, equal identity
    assert again.sha256 == hashlib.sha256(data).hexdigest()
    assert (again.labels, again.plan, again.preprocess) == (pack.labels, pack.plan, pack.preprocess)


def test_pruned_plans_and_frozen_bn_round_trip(backbone, make_pack):
    full = Plan.full(backbone.spec, 3, bottleneck=False, task_bn=False)
    layers = list(full.layers)
    layers[1] = LayerPlan(False, layers[1].proxies[:1])
    pack = make_pack(plan=Plan(full.arch, False, False, tuple(layers)))
    assert not any(k.startswith("norms.") for k in pack.tensors)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(TaskPack.from_bytes(pack.to_bytes()).build(backbone)(x), pack.build(backbone)(x))


def test_bytes_are_standard_safetensors_with_the_documented_metadata(make_pack):
    data = make_pack().to_bytes()
    tensors = st_load(data)
    assert set(tensors) == set(make_pack().tensors)
    meta = st_io.read_metadata(data)
    assert set(meta) == {"format", "task_id", "version", "backbone_id", "plan", "labels", "preprocess",
                         "metrics", "created_at"}
    assert meta["format"] == "nettailor-pack/2"
    assert json.loads(meta["metrics"])["val_acc"] == 0.9
    info = read_pack_info(data)
    assert (info.task_id, info.sha256, info.nbytes) == ("digits", hashlib.sha256(data).hexdigest(), len(data))


def test_pickles_and_garbage_are_corrupt(make_pack):
    data = make_pack().to_bytes()
    import io
    import pickle

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    for bad in (b"", b"\x00" * 7, b"garbage" * 100, pickle.dumps({"a": 1}), buf.getvalue(), data[: len(data) // 2],
                data[:-1], struct.pack("<Q", 10**12) + data[8:]):
        with pytest.raises(CorruptPack):
            TaskPack.from_bytes(bad)
        with pytest.raises(CorruptPack):
            read_pack_info(bad)


def test_foreign_and_future_formats(make_pack):
    foreign = st_save({"weight": torch.ones(3)}, metadata={"framework": "pt"})
    with pytest.raises(CorruptPack, match="not a TaskPack"):
        TaskPack.from_bytes(foreign)
    future = _rewrite(make_pack().to_bytes(), {"format": "nettailor-pack/3"})
    with pytest.raises(UnsupportedFormat, match="nettailor-pack/3"):
        TaskPack.from_bytes(future)


def test_format_1_is_refused_with_its_reason(make_pack):
    old = _rewrite(make_pack().to_bytes(), {"format": "nettailor-pack/1"})
    for read in (TaskPack.from_bytes, read_pack_info):
        with pytest.raises(UnsupportedFormat, match=r"'nettailor-pack/1'.*re-tailor"):
            read(old)


@pytest.mark.parametrize(
    ("update", "match"),
    [({"plan": "{not json"}, "plan"), ({"labels": "[]"}, "labels"), ({"labels": "{}"}, "labels"),
     ({"preprocess": '{"size": 32}'}, "metadata"), ({"metrics": "[1]"}, "metrics"),
     ({"backbone_id": "abc"}, "SHA-256"), ({"task_id": "../../etc/passwd"}, "task_id")],
)
def test_bad_metadata_is_corrupt(make_pack, update, match):
    with pytest.raises(CorruptPack, match=match):
        TaskPack.from_bytes(_rewrite(make_pack().to_bytes(), update))


def test_missing_key_is_corrupt(make_pack):
    tensors, meta = st_io.loads(make_pack().to_bytes())
    del meta["labels"]
    with pytest.raises(CorruptPack, match="lacks"):
        TaskPack.from_bytes(st_io.dumps(tensors, meta))


def test_tensors_are_checked_against_the_plan(backbone, make_pack):
    data = make_pack().to_bytes()
    tensors, meta = st_io.loads(data)
    name = next(k for k in tensors if k.startswith("proxies."))
    cases = {
        "needs": {**tensors, name: torch.zeros(1, 1, 1, 1)},
        "missing": {k: v for k, v in tensors.items() if k != name},
        "unexpected": {**tensors, "extra.weight": torch.zeros(1)},
        "NaN": {**tensors, "head.bias": torch.full_like(tensors["head.bias"], float("nan"))},
        "float64": {**tensors, "head.bias": tensors["head.bias"].double()},
    }
    for msg, bad in cases.items():
        pack = TaskPack.from_bytes(st_io.dumps(bad, meta))
        with pytest.raises(CorruptPack, match=msg):
            pack.build(backbone)
    # A plan whose proxy shapes do not fit the backbone is refused before any tensor is read.
    plan = json.loads(meta["plan"])
    plan["layers"][2]["proxies"][0]["out_channels"] = 7
    with pytest.raises(CorruptPack, match="does not fit"):
        TaskPack.from_bytes(_rewrite(data, {"plan": json.dumps(plan)})).build(backbone)


def test_wrong_backbone_is_refused(backbone, other_backbone, make_pack):
    data = make_pack().to_bytes()
    with pytest.raises(BackboneMismatch, match="trained on backbone"):
        TaskPack.from_bytes(data, backbone_id=other_backbone.backbone_id)
    with pytest.raises(BackboneMismatch):
        TaskPack.from_bytes(data).build(other_backbone)


def test_from_net_checks_ids_and_labels(backbone):
    net = TailoredNet(backbone, Plan.full(backbone.spec, 1, bottleneck=False), 2)
    with pytest.raises(InvalidTaskId):
        TaskPack.from_net(net, "bad id!", ["a", "b"], Preprocess())
    with pytest.raises(ValueError, match="labels"):
        TaskPack.from_net(net, "ok", ["a"], Preprocess())


def test_st_io_matches_the_safetensors_library():
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.zeros(0),
               "d": torch.ones(2, dtype=torch.bfloat16)}
    data = st_io.dumps(tensors, {"k": "v", "a": "b"})
    loaded = st_load(data)
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert st_io.read_metadata(data) == {"a": "b", "k": "v"}
    assert data == st_io.dumps(dict(reversed(tensors.items())), {"a": "b", "k": "v"})


def test_a_pack_is_immutable_and_shares_no_tensor_with_its_nets(backbone, make_pack):
    """Its SHA-256 is cached, so nothing may change what to_bytes() writes: not the fields, not the
    containers, and not training a net built from it or the net it was made from."""
    net = TailoredNet(backbone, Plan.full(backbone.spec, 3, bottleneck=False), 3)
    labels = ["a", "b", "c"]
    pack = TaskPack.from_net(net, "digits", labels, Preprocess(size=32), metrics={"val_acc": 0.5})
    sha = pack.sha256
    labels.append("d")  # the caller's own list
    with pytest.raises(dataclasses.FrozenInstanceError):
        pack.version = "2"  # type: ignore[misc]
    for mutate in (lambda: pack.labels.append("x"), lambda: pack.metrics.update(x=1),
                   lambda: pack.metrics.__setitem__("x", 1), lambda: pack.labels.__setitem__(0, "z")):
        with pytest.raises(TypeError):
            mutate()
    with pytest.raises(TypeError):
        pack.tensors["x"] = torch.zeros(1)  # type: ignore[index]
    built = pack.build(backbone)
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers(), *built.parameters(), *built.buffers()]:
            t.add_(1)
    assert pack.labels == ["a", "b", "c"] and json.loads(json.dumps(pack.metrics)) == {"val_acc": 0.5}
    assert pack.sha256 == sha == hashlib.sha256(pack.to_bytes()).hexdigest()
    assert dataclasses.replace(pack, version="2").version == "2"  # a new pack is how one changes
