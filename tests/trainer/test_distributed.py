"""``torchrun --nproc-per-node 2 -m nettailor tailor`` on CPU (gloo) against the same run in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from blockstore import TaskPack
from trainer.distributed import rank_world
from trainer.engine import StepBatches

ROOT = Path(__file__).resolve().parents[2]


def test_rank_shards_add_up_to_the_one_process_batches():
    one = list(StepBatches(100, 32, 7, seed=1))
    shards = [list(StepBatches(100, 32, 7, seed=1, rank=r, world=2)) for r in range(2)]
    for t in range(7):
        assert sorted(shards[0][t] + shards[1][t]) == sorted(one[t])
        assert not set(shards[0][t]) & set(shards[1][t])
    assert rank_world() == (0, 1)  # no process group in the test process


def _tailor(tmp_path: Path, bb_file: Path, name: str, launcher: list[str]) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "nettailor", "tailor", "--dataset", "synthetic:4", "--task-id", "toy",
           "--backbone-file", str(bb_file), "--cache-dir", "", "--no-progress", "--augment", "none",
           "--teacher-steps", "24", "--student-steps", "24", "--finetune-steps", "12", "--sweep", "0,2",
           "--batch-size", "32", "--tolerance", "100", "--device", "cpu",
           "--work-dir", str(tmp_path / name), "--out", str(tmp_path / f"{name}.pack"),
           "--report-dir", str(tmp_path / f"{name}-report")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_process_torchrun_tailor_matches_one_process(tmp_path, backbone):
    bb_file = tmp_path / "bb.safetensors"
    bb_file.write_bytes(backbone.to_bytes())
    one = _tailor(tmp_path, bb_file, "one", [sys.executable])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _tailor(tmp_path, bb_file, "two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc-per-node", "2"])
    assert two.returncode == 0, two.stderr[-3000:]
    # rank 0 alone wrote the pack, and it is a valid pack for the backbone
    pack = TaskPack.from_bytes((tmp_path / "two.pack").read_bytes(), backbone_id=backbone.backbone_id)
    pack.build(backbone)
    # the same global batch in one process and in two: the student's alphas and accuracy agree
    a = TaskPack.from_bytes((tmp_path / "one" / "student.pack").read_bytes()).build(backbone)
    b = TaskPack.from_bytes((tmp_path / "two" / "student.pack").read_bytes()).build(backbone)
    with torch.no_grad():
        for l in range(1, len(a.plan.layers) + 1):
            assert torch.allclose(a.path_weights(l), b.path_weights(l), atol=0.05), l
    r1 = json.loads((tmp_path / "one-report" / "toy-report.json").read_text())["student"]
    r2 = json.loads((tmp_path / "two-report" / "toy-report.json").read_text())["student"]
    assert abs(r1["val_acc"] - r2["val_acc"]) <= 0.15
    assert r1["steps"] == r2["steps"] == 24  # the budget is global steps, not per process
