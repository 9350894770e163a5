from __future__ import annotations

import json

import pytest
import torch

from blockstore import TaskPack
from tests.conftest import make_backbone
from trainer.data import DataConfig, load_task
from trainer.engine import evaluate
from trainer.errors import ConfigError
from trainer.report import write_report
from trainer.tailor import SweepPoint, TailorConfig, select, tailor

from .conftest import quick_finetune, quick_student, quick_teacher


def _point(n: int, val: float | None, params: int, flops: int = 0) -> SweepPoint:
    return SweepPoint(n, val, val, {"params": params, "flops": flops}, "{}")


def test_select_prefers_leanest_within_tolerance():
    pts = [_point(0, 0.990, 100), _point(1, 0.987, 80), _point(2, 0.9855, 60), _point(3, 0.95, 10)]
    best, ok = select(pts, teacher_val=0.990, tolerance=0.5)
    assert ok and best.n == 2
    best, ok = select(pts, teacher_val=0.999, tolerance=0.5)
    assert not ok and best.n == 0  # none within tolerance: the most accurate one
    best, ok = select([*pts, _point(4, None, 5)], teacher_val=0.990, tolerance=0.5)
    assert ok and best.n == 2  # a candidate never fine-tuned is never selected


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
    config = TailorConfig("toy", quick_teacher(steps=30), quick_student(steps=45), quick_finetune(steps=20),
                          sweep=(0, 2, 3), tolerance=50.0)
    result = tailor(bb, data, config, tmp_path / "work")
    blob = result.pack.to_bytes()

    # the blockstore loads the pack, and it classifies held-out data better than chance
    net = TaskPack.from_bytes(blob, backbone_id=bb.backbone_id).build(bb)
    acc = evaluate(net, data.test, result.pack.preprocess, torch.device("cpu"))
    assert acc > 0.4, acc  # chance is 0.25
    assert acc == pytest.approx(result.pack.metrics["test_acc"], abs=1e-9)
    m = result.pack.metrics
    assert m["within_tolerance"] and m["n"] in (0, 2, 3)
    assert m["blocks_kept"] < 4  # with a 50-point tolerance the leanest candidate wins
    sweep = {p["n"]: p for p in result.report["sweep"]}
    assert set(sweep) == {0, 2, 3}
    assert not sweep[0]["tried"]  # leanest first: once one is within tolerance, larger ones cannot win

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


def _controlled_sweep(monkeypatch, tiny_task, accuracy):
    """Tailor with a fixed teacher accuracy (0.99) and fine-tuned accuracies given by ``accuracy(plan)``."""
    import trainer.tailor as tailor_mod
    from trainer.teacher import make_teacher

    bb = make_backbone(seed=0)
    teacher = make_teacher(bb, tiny_task.num_classes)
    monkeypatch.setattr(tailor_mod, "_teacher", lambda *a, **k: (teacher, {"val_acc": 0.99, "test_acc": 0.98,
                                                                           "key": "t"}))
    tried = []

    def finetune(net, teacher, data, config, ckpt, desc):
        tried.append(len(net.plan.blocks_kept))
        acc = accuracy(net.plan)
        return {"val_acc": acc, "test_acc": acc, "history": {"steps": 1}}

    monkeypatch.setattr(tailor_mod, "finetune", finetune)
    return bb, tried


def test_sweep_explores_past_a_miss_and_warns_when_none_is_within_tolerance(tmp_path, tiny_task, monkeypatch,
                                                                           caplog):
    bb, tried = _controlled_sweep(monkeypatch, tiny_task, lambda plan: 0.5 + 0.1 * len(plan.blocks_kept))
    config = TailorConfig("toy", quick_teacher(), quick_student(), quick_finetune(), sweep=(0, 1, 2, 3))
    result = tailor(bb, tiny_task, config, tmp_path / "w")
    m = result.report["metrics"]
    distinct = [p for p in result.report["sweep"] if p["same_as"] is None]
    assert len(tried) == len(distinct) > 1  # every candidate was fine-tuned, past the first misses
    assert not m["within_tolerance"] and m["val_acc"] == max(p["val_acc"] for p in distinct)  # the most accurate
    assert "remedies" in m["warning"] and result.pack.metrics["warning"] == m["warning"]
    assert "no tailored network is within" in caplog.text


def test_sweep_stops_at_the_leanest_candidate_within_tolerance(tmp_path, tiny_task, monkeypatch):
    bb, tried = _controlled_sweep(monkeypatch, tiny_task, lambda plan: 0.95 + 0.01 * len(plan.blocks_kept))
    config = TailorConfig("toy", quick_teacher(), quick_student(), quick_finetune(), sweep=(0, 1, 2, 3))
    result = tailor(bb, tiny_task, config, tmp_path / "w")
    m = result.report["metrics"]
    assert m["within_tolerance"] and m["blocks_kept"] == 4 and "warning" not in m  # 0.99 only with 4 blocks
    assert tried == sorted(tried)  # leanest first, up to the first one within tolerance
    assert tried[-1] == 4
