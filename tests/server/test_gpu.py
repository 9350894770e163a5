"""GPU checks: the universal blocks and task tensors live on CUDA and give the CPU's answers, with both
cross-task kernels, for single-task samples and multi-task frames batched together."""

from __future__ import annotations

import pytest
import torch

from blockstore import Backbone
from server.executor import Executor, PreparedTask
from server.kernels import KERNELS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_batch_on_cuda_matches_cpu(backbone, make_pack, kernel):
    gpu_bb = Backbone.from_bytes(backbone.to_bytes()).freeze().eval().to("cuda")
    packs = [make_pack(f"t{i}", num_classes=3 + i, seed=i) for i in range(3)]
    cpu = [PreparedTask.from_pack(p, backbone, version=1) for p in packs]
    gpu = [PreparedTask.from_pack(p, gpu_bb, version=1) for p in packs]
    assert all(t.device.type == "cuda" for task in gpu for t in task.tensors())
    xs = torch.randn(9, 3, 32, 32)
    want = Executor(backbone).run_frames([(xs[0], cpu)] + [(x, [cpu[i % 3]]) for i, x in enumerate(xs[1:])])
    got = Executor(gpu_bb, kernel=kernel).run_frames([(xs[0], gpu)] + [(x, [gpu[i % 3]]) for i, x in enumerate(xs[1:])])
    for a_frame, b_frame in zip(want, got):
        for a, b in zip(a_frame, b_frame):
            assert b.device.type == "cpu"
            assert torch.allclose(a, b, atol=1e-3)
