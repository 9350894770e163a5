"""Trainer fixtures: a tiny synthetic task and quick stage configs (resnet10, 32 px, a few steps)."""

from __future__ import annotations

import pytest

from trainer.data import DataConfig, TaskData, load_task
from trainer.student import FinetuneConfig, StudentConfig
from trainer.teacher import TeacherConfig


@pytest.fixture(scope="session")
def tiny_task() -> TaskData:
    return load_task(DataConfig(dataset="synthetic:4", cache_dir=None, seed=0))


QUICK = {"progress": False, "batch_size": 32, "device": "cpu"}


def quick_teacher(**kw) -> TeacherConfig:
    return TeacherConfig(**(QUICK | {"steps": 15} | kw))


def quick_student(**kw) -> StudentConfig:
    return StudentConfig(**(QUICK | {"steps": 15} | kw))


def quick_finetune(**kw) -> FinetuneConfig:
    return FinetuneConfig(**(QUICK | {"steps": 10} | kw))
