"""The NetTailor training procedure, from data to a published task pack.

Stages (each a function and a ``nettailor`` subcommand): :func:`pretrain`, :func:`train_teacher`,
:func:`train_student`, :func:`prune`, :func:`finetune`, :func:`tailor`, :func:`publish`, and
:func:`pack_summary` for ``inspect``.  Configuration is a typed dataclass per stage.  It imports
blockstore, never server.  Names resolve lazily so that ``nettailor --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CheckpointError", "ConfigError", "DataConfig", "DataError", "FinetuneConfig", "PretrainConfig", "PruneConfig",
    "StudentConfig", "TailorConfig", "TailorResult", "TaskData", "TeacherConfig", "TrainConfig", "TrainerError",
    "distillation", "expected_complexity", "finetune", "load_task", "pack_summary", "pretrain", "prune", "prune_plan",
    "publish", "tailor", "train_student", "train_teacher", "write_report",
]

_WHERE = {
    "CheckpointError": "errors", "ConfigError": "errors", "DataError": "errors", "TrainerError": "errors",
    "DataConfig": "data", "TaskData": "data", "load_task": "data",
    "TrainConfig": "engine",
    "PretrainConfig": "pretrain", "pretrain": "pretrain",
    "TeacherConfig": "teacher", "train_teacher": "teacher",
    "StudentConfig": "student", "FinetuneConfig": "student", "train_student": "student", "finetune": "student",
    "distillation": "losses", "expected_complexity": "losses",
    "PruneConfig": "prune", "prune": "prune", "prune_plan": "prune",
    "TailorConfig": "tailor", "TailorResult": "tailor", "tailor": "tailor",
    "publish": "export", "pack_summary": "inspect_pack", "write_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
