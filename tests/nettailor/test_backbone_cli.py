"""``nettailor backbone import|list``: a torchvision-format file in, a validated backbone blob out, and new
tasks on it inheriting its normalisation."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet

from blockstore import IMAGENET_NORMALIZATION, Backbone, DirStore, TaskPack
from nettailor.cli import main


@pytest.fixture
def tv_file(tmp_path):
    """A torchvision-format ResNet-10 state dict with a 3x3 stride-2 stem, built here (nothing downloaded)."""
    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 2, 1, bias=False)
    path = tmp_path / "resnet10.pth"
    torch.save(net.state_dict(), path)
    return path


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_import_list_and_tasks_default_to_the_backbones_normalisation(tmp_path, tv_file, capsys):
    store = str(tmp_path / "store")
    rc = main(["backbone", "import", str(tv_file), "--stem", "3x3s2", "--size", "32", "--normalization", "imagenet",
               "--default", "--store", store, "--out", str(tmp_path / "bb.safetensors")])
    assert rc == 0
    out = _json(capsys)
    assert (out["arch"], out["stem"], out["size"], out["default"]) == ("resnet10", "3x3s2", 32, True)
    bb = Backbone.from_bytes((tmp_path / "bb.safetensors").read_bytes())
    assert bb.backbone_id == out["backbone_id"] == DirStore(store).default_backbone_id()
    assert bb.normalization == IMAGENET_NORMALIZATION and bb.source.startswith("file:resnet10.pth sha256=")

    # A second import, not the default: the hint says how to use it.
    rc = main(["backbone", "import", str(tv_file), "--stem", "3x3s1", "--size", "32", "--store", store])
    assert rc == 0
    captured = capsys.readouterr()
    other = json.loads(captured.out)
    assert other["default"] is False and f"NETTAILOR_BACKBONE={other['backbone_id']}" in captured.err

    assert main(["backbone", "list", "--store", store, "--json"]) == 0
    listed = {b["backbone_id"]: b for b in _json(capsys)["backbones"]}
    assert set(listed) == {out["backbone_id"], other["backbone_id"]}
    assert listed[out["backbone_id"]]["default"] and listed[out["backbone_id"]]["normalization"] == [
        list(IMAGENET_NORMALIZATION[0]), list(IMAGENET_NORMALIZATION[1])]
    assert listed[other["backbone_id"]]["normalization"] is None
    assert main(["backbone", "list", "--store", store]) == 0
    table = capsys.readouterr().out
    assert f"*  {out['backbone_id'][:12]}  resnet10  3x3s2" in table and "0.485,0.456,0.406/0.229,0.224,0.225" in table

    # New tasks on the default backbone use its normalisation (three values, even for grey images).
    common = ["--dataset", "synthetic", "--store", store, "--work-dir", str(tmp_path / "w"), "--no-progress",
              "--max-steps", "1", "--batch-size", "16", "--cache-dir", "", "--epochs", "1"]
    assert main(["teacher", *common]) == 0
    assert main(["student", *common]) == 0
    capsys.readouterr()
    pack = TaskPack.from_bytes((tmp_path / "w" / "student.pack").read_bytes())
    assert pack.backbone_id == out["backbone_id"]
    assert (pack.preprocess.channels, pack.preprocess.mean, pack.preprocess.std) == (1, *IMAGENET_NORMALIZATION)


def test_import_errors_are_clear(tmp_path, tv_file, make_pack, capsys):
    store = str(tmp_path / "store")
    assert main(["backbone", "import", str(tv_file), "--store", store]) == 2
    assert "--stem 3x3s1 or --stem 3x3s2" in capsys.readouterr().err
    assert main(["backbone", "import", str(tv_file), "--stem", "3x3s2", "--normalization", "0.5/0.5",
                 "--store", store]) == 2
    assert "--normalization must be" in capsys.readouterr().err
    assert main(["backbone", "import", "torchvision:ResNet18_Weights.NOPE", "--store", store]) == 2
    assert "error [weights_unavailable]" in capsys.readouterr().err
    # publish --backbone-file used to store a .pth's bytes under an id no pack can ever name.
    pack = tmp_path / "p.pack"
    pack.write_bytes(make_pack().to_bytes())
    assert main(["publish", str(pack), "--store", store, "--backbone-file", str(tv_file)]) == 2
    assert "not a NetTailor backbone blob" in capsys.readouterr().err
    assert main(["backbone", "list", "--store", store, "--json"]) == 0
    assert _json(capsys)["backbones"] == []
