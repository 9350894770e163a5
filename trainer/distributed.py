"""Data-parallel training under ``torchrun``: DistributedDataParallel over gloo (CPU) or NCCL (CUDA).

    torchrun --nproc-per-node 2 -m nettailor tailor --dataset folder:/data/signs     # CPU, gloo
    torchrun --nproc-per-node 8 -m nettailor tailor --dataset folder:/data/signs     # 8 GPUs, NCCL

Every stage keeps its global batch (``--batch-size``): each of the N processes takes its 1/N share of
every step's batch (:class:`trainer.engine.StepBatches` with ``rank``/``world``), DDP averages the
gradients, and the step budget, the schedule and the validation checks are those of a one-process
run.  Every process evaluates the whole validation split, so all take the same early-stopping decision.
Only rank 0 writes checkpoints, stage files, packs and reports, and only rank 0 publishes; the others
wait at a barrier and then read what rank 0 wrote.  Resuming works as in one process.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["barrier", "data_parallel", "init_from_env", "is_main", "rank_world"]


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); False when there is none."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return True


def data_parallel(module: nn.Module) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when running under torchrun, else itself."""
    if rank_world()[1] <= 1:
        return module
    dev = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
