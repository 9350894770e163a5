from __future__ import annotations

import json

import pytest
import torch

from blockstore import TaskPack
from tests.conftest import make_backbone
from trainer.data import DataConfig, batches, load_task
from trainer.errors import ConfigError
from trainer.report import write_report
from trainer.tailor import SweepPoint, TailorConfig, select, tailor

from .conftest import quick_finetune, quick_student, quick_teacher


def _point(n: int, val: float, params: int, flops: int = 0) -> SweepPoint:
    return SweepPoint(n, val, val, {"params": params, "flops": flops}, "{}")


def test_select_prefers_leanest_within_tolerance():
    pts = [_point(0, 0.990, 100), _point(1, 0.987, 80), _point(2, 0.9855, 60), _point(3, 0.95, 10)]
    best, ok = select(pts, teacher_val=0.990, tolerance=0.5)
    assert ok and best.n == 2
    best, ok = select(pts, teacher_val=0.999, tolerance=0.5)
    assert not ok and best.n == 0  # none within tolerance: the most accurate one


def test_tailor_config_validation():
    with pytest.raises(ConfigError):
        TailorConfig("t", tolerance=-1)
    with pytest.raises(ConfigError):
        TailorConfig("t", sweep=())
    with pytest.raises(Exception, match="invalid task id"):
        TailorConfig("../etc")


@pytest.mark.slow
def test_tiny_tailor_end_to_end_and_resume(tmp_path, monkeypatch):
    data = load_task(DataConfig(dataset="synthetic:4", cache_dir=None, seed=0))
    bb = make_backbone(seed=0)
    config = TailorConfig("toy", quick_teacher(epochs=2), quick_student(epochs=3), quick_finetune(epochs=2),
                          sweep=(0, 2, 3), patience=None, tolerance=50.0)
    result = tailor(bb, data, config, tmp_path / "work")
    blob = result.pack.to_bytes()

    # the blockstore loads the pack, and it classifies held-out data better than chance
    net = TaskPack.from_bytes(blob, backbone_id=bb.backbone_id).build(bb)
    correct = 0
    with torch.no_grad():
        for imgs, labels in batches(data.test, 128):
            correct += int((net(result.pack.preprocess.normalize(imgs)).argmax(1) == labels).sum())
    acc = correct / len(data.test)
    assert acc > 0.4, acc  # chance is 0.25
    assert acc == pytest.approx(result.pack.metrics["test_acc"], abs=1e-9)
    m = result.pack.metrics
    assert m["within_tolerance"] and m["n"] in (0, 2, 3)
    assert m["blocks_kept"] < 4  # with a 50-point tolerance the leanest candidate wins
    assert {p["n"] for p in result.report["sweep"]} == {0, 2, 3}

    # the report: JSON and two PNGs
    paths = write_report(result.report, tmp_path / "report")
    assert json.loads(paths["json"].read_text())["metrics"]["n"] == m["n"]
    for k in ("architecture", "sweep"):
        assert paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a rerun resumes: no stage trains again, and the result is the same pack
    import trainer.tailor as tailor_mod

    def boom(*a, **k):
        raise AssertionError("a finished stage was retrained")

    monkeypatch.setattr(tailor_mod, "train_teacher", boom)
    monkeypatch.setattr(tailor_mod, "train_student", boom)
    monkeypatch.setattr(tailor_mod, "finetune", boom)
    again = tailor(bb, data, config, tmp_path / "work")
    assert torch.equal(again.pack.tensors["head.weight"], result.pack.tensors["head.weight"])
    assert again.pack.plan == result.pack.plan


def test_wrong_input_size_is_refused(tmp_path, tiny_task):
    from blockstore import BackboneConfig

    bb = make_backbone(config=BackboneConfig("resnet10", "3x3s2", 64, 10))
    with pytest.raises(ConfigError, match="px"):
        tailor(bb, tiny_task, TailorConfig("t"), tmp_path)
