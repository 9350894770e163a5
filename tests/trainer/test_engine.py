from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.data import DataConfig, make_task
from trainer.datasets import synthetic
from trainer.engine import StepBatches, TrainConfig, fit, resolve_steps
from trainer.errors import ConfigError, TrainerError


class _Boom(Exception):
    pass


def _setup():
    cfg = DataConfig(dataset="s", size=8, val_min=1, augment="none")
    task = make_task("s", synthetic(2, 8, n_train=64, n_test=8), cfg)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    return task, model


def _groups(model):
    return [{"params": list(model.parameters())}]


def test_budgets_are_steps_scaled_to_the_data_with_a_floor_and_a_ceiling():
    cfg = TrainConfig(batch_size=64, auto_epochs=5, min_steps=200, max_steps=1500)
    assert resolve_steps(cfg, 1_000) == 200  # 5 passes would be 80 steps: the floor
    assert resolve_steps(cfg, 10_000) == 5 * 157
    assert resolve_steps(cfg, 60_000) == 1500  # the ceiling
    assert resolve_steps(TrainConfig(epochs=2, batch_size=10), 95) == 20  # epochs: a convenience
    assert resolve_steps(TrainConfig(epochs=50, batch_size=10, max_steps=300), 95) == 300  # capped
    assert resolve_steps(TrainConfig(steps=7), 10_000) == 7  # explicit steps win


def test_step_batches_are_a_pure_function_of_seed_and_step():
    full = list(StepBatches(50, 8, 20, seed=3))
    assert len(full) == 20 and all(len(b) == 8 for b in full)
    assert sorted(i for b in full[:6] for i in b) == sorted({i for b in full[:6] for i in b})  # an epoch
    assert list(StepBatches(50, 8, 20, seed=3, start=13)) == full[13:]  # resuming skips nothing


def test_fit_runs_its_step_budget_and_reports_it():
    task, model = _setup()
    seen = []

    def step(x, y):
        seen.append(len(y))
        logits = model(x)
        return F.cross_entropy(logits, y), {}, logits

    hist = fit(model, _groups(model), task.training_set(), task.preprocess,
               TrainConfig(steps=13, batch_size=8, eval_every=5, progress=False, device="cpu"), step,
               torch.device("cpu"), "t")
    assert len(seen) == 13 and hist["steps"] == 13 and hist["stopped"] == "budget"
    assert [c["step"] for c in hist["checks"]] == [5, 10, 13]


def test_early_stopping_restores_the_best_checkpoint():
    task, model = _setup()
    scores = iter([0.5, 0.9, 0.6, 0.6, 0.7, 0.95])
    weights = {}

    def step(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), {}, logits

    def validate():
        s = next(scores)
        weights[s] = model[1].weight.detach().clone()
        return s

    cfg = TrainConfig(steps=60, batch_size=8, eval_every=5, patience=3, progress=False, device="cpu")
    hist = fit(model, _groups(model), task.training_set(), task.preprocess, cfg, step, torch.device("cpu"), "t",
               validate=validate)
    assert hist["stopped"] == "early_stop" and hist["steps"] == 25  # 0.9 at step 10, then 3 checks without gain
    assert hist["best_step"] == 10 and hist["best_val"] == 0.9
    assert torch.equal(model[1].weight, weights[0.9])  # the best checkpoint, not the last


def test_early_stopping_waits_for_the_plateau():
    task, model = _setup()
    moving = iter([[0.1], [0.3], [0.5], [0.51], [0.515], [0.52], [0.9]])

    def step(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), {}, logits

    cfg = TrainConfig(steps=70, batch_size=8, eval_every=10, patience=2, restore_best=False, progress=False,
                      device="cpu")
    hist = fit(model, _groups(model), task.training_set(), task.preprocess, cfg, step, torch.device("cpu"), "t",
               validate=lambda: 0.5, plateau=lambda: next(moving), plateau_tol=0.02)
    # validation stalls from the 2nd check on, but the numbers keep moving until the 4th check
    assert hist["stopped"] == "early_stop" and hist["steps"] == 40


def test_interrupted_fit_resumes_from_its_last_check(tmp_path):
    task, model = _setup()
    config = TrainConfig(steps=12, batch_size=16, eval_every=4, progress=False, device="cpu")
    calls = {"n": 0, "fail_at": 6}

    def step(x, y):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise _Boom
        logits = model(x)
        return F.cross_entropy(logits, y), {}, logits

    ckpt = tmp_path / "ckpt.safetensors"
    with pytest.raises(_Boom):  # dies at step 6, after the check at step 4
        fit(model, _groups(model), task.training_set(), task.preprocess, config, step, torch.device("cpu"), "t",
            ckpt)
    assert ckpt.is_file()
    after_check = {k: v.clone() for k, v in model.state_dict().items()}
    calls.update(n=0, fail_at=-1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # prove the checkpoint, not the live module, is where the run continues from
    hist = fit(model, _groups(model), task.training_set(), task.preprocess, config, step, torch.device("cpu"), "t",
               ckpt)
    assert calls["n"] == 8 and hist["steps"] == 12  # steps 5..12 only
    assert any(not torch.equal(after_check[k], v) for k, v in model.state_dict().items())


def test_nan_loss_is_a_clear_error():
    task, model = _setup()

    def step(x, y):
        logits = model(x)
        return logits.sum() * float("nan"), {}, logits

    with pytest.raises(TrainerError, match="loss became nan"):
        fit(model, _groups(model), task.training_set(), task.preprocess,
            TrainConfig(steps=3, progress=False, device="cpu"), step, torch.device("cpu"), "t")


def test_config_validation():
    for bad in ({"lr": -1}, {"batch_size": 0}, {"steps": 0}, {"epochs": 0}, {"min_steps": 10, "max_steps": 5},
                {"patience": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
