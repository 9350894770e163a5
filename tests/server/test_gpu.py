"""GPU checks: the universal blocks and task tensors live on CUDA and give the CPU's answers."""

from __future__ import annotations

import pytest
import torch

from blockstore import Backbone
from server.executor import Executor, PreparedTask

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_mixed_batch_on_cuda_matches_cpu(backbone, make_pack):
    gpu_bb = Backbone.from_bytes(backbone.to_bytes()).freeze().eval().to("cuda")
    packs = [make_pack(f"t{i}", num_classes=3 + i, seed=i) for i in range(3)]
    cpu = [PreparedTask.from_pack(p, backbone, version=1) for p in packs]
    gpu = [PreparedTask.from_pack(p, gpu_bb, version=1) for p in packs]
    assert all(t.device.type == "cuda" for task in gpu for t in task.tensors())
    xs = torch.randn(9, 3, 32, 32)
    want = Executor(backbone).run([(cpu[i % 3], x) for i, x in enumerate(xs)])
    got = Executor(gpu_bb).run([(gpu[i % 3], x) for i, x in enumerate(xs)])
    for a, b in zip(want, got):
        assert b.device.type == "cpu"
        assert torch.allclose(a, b, atol=1e-3)
