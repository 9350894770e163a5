from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import DataConfig, make_task
from trainer.datasets import synthetic
from trainer.engine import TrainConfig, fit
from trainer.errors import ConfigError, TrainerError


class _Boom(Exception):
    pass


def _setup():
    task = make_task("s", synthetic(2, 8, n_train=64, n_test=8), DataConfig(dataset="s"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    return task, model


def test_interrupted_fit_resumes_from_last_epoch(tmp_path):
    task, model = _setup()
    config = TrainConfig(epochs=3, batch_size=16, progress=False, device="cpu")
    calls = {"n": 0, "fail_at": 5}

    def step(x, y):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise _Boom
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return loss, {}, logits

    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(_Boom):  # 4 steps per epoch: dies in epoch 2
        fit(model, [{"params": list(model.parameters())}], task.train, task.preprocess, config, step,
            torch.device("cpu"), "t", ckpt)
    assert ckpt.is_file()
    after_one = {k: v.clone() for k, v in model.state_dict().items()}
    calls.update(n=0, fail_at=-1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # prove the checkpoint, not the live module, is where the run continues from
    hist = fit(model, [{"params": list(model.parameters())}], task.train, task.preprocess, config, step,
               torch.device("cpu"), "t", ckpt)
    assert calls["n"] == 8  # epochs 2 and 3 only
    assert len(hist["train_acc"]) == 2
    assert any(not torch.equal(after_one[k], v) for k, v in model.state_dict().items())


def test_nan_loss_is_a_clear_error():
    task, model = _setup()

    def step(x, y):
        logits = model(x)
        return logits.sum() * float("nan"), {}, logits

    with pytest.raises(TrainerError, match="loss became nan"):
        fit(model, [{"params": list(model.parameters())}], task.train, task.preprocess,
            TrainConfig(progress=False, device="cpu"), step, torch.device("cpu"), "t")


def test_config_validation():
    with pytest.raises(ConfigError):
        TrainConfig(lr=-1)
    with pytest.raises(ConfigError):
        TrainConfig(batch_size=0)
