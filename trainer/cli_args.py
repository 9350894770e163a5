"""Argument groups shared by the trainer's subcommands, and their conversion into the core's configs.

Only argparse lives here; every value is validated again by the typed configs it lands in.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from blockstore import STEMS

from .errors import ConfigError

__all__ = [
    "add_backbone_args", "add_data_args", "add_student_args", "add_train_args", "data_config", "default_task_id",
    "parse_k", "parse_sweep", "student_kwargs", "train_kwargs",
]


def add_data_args(p: argparse.ArgumentParser, default: str = "mnist") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=default,
                   help=f"data set: mnist, mnist-01, mnist-parity, fashion, synthetic[:N] or folder:/path "
                        f"(<class>/<image>, or train/<class>/<image> with optional val/ and test/; default {default})")
    g.add_argument("--size", type=int, default=None,
                   help="input side in pixels, recorded in the pack; images of any size are resized to it "
                        "(default: the backbone's input size)")
    g.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="image folders only: 1 for grey, 3 for colour (default 3)")
    g.add_argument("--augment", default="auto", choices=("auto", "none", "crop", "crop-flip"),
                   help="training augmentation: random resized crops, plus horizontal flips with crop-flip (use "
                        "it only when a mirror image keeps its class); colour data also get colour jitter. auto: "
                        "per data set (flips for fashion, never for digits; crops for folders) (default auto)")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train carved out (seeded) as the validation split when the data have none "
                        "(default 0.1)")
    g.add_argument("--val-min", type=int, default=500,
                   help="the carved validation split's floor in images, capped at a quarter of train (default 500)")
    g.add_argument("--train-limit", type=int, default=None, help="use at most this many training images")
    g.add_argument("--val-limit", type=int, default=None, help="use at most this many validation images")
    g.add_argument("--test-limit", type=int, default=None, help="use at most this many test images")
    g.add_argument("--cache-dir", default=".nettailor/cache",
                   help="where decoded uint8 images are cached ('' disables; default .nettailor/cache)")
    g.add_argument("--seed", type=int, default=0, help="seed for splits, initialisation and shuffling (default 0)")


def data_config(args: argparse.Namespace, size: int | None = None):
    from .data import DataConfig

    return DataConfig(dataset=args.dataset, size=args.size or size or 32, val_fraction=args.val_fraction,
                      val_min=args.val_min, train_limit=args.train_limit, val_limit=args.val_limit,
                      test_limit=args.test_limit, seed=args.seed, cache_dir=args.cache_dir or None,
                      channels=args.channels, augment=args.augment)


def add_train_args(p: argparse.ArgumentParser, prefix: str = "", *, lr: float, title: str = "training",
                   shared: bool = True, budget: str = "") -> None:
    """--steps/--epochs/--lr (optionally prefixed, e.g. --student-steps) and, with ``shared``, the loop's flags."""
    g = p.add_argument_group(title)
    dash = f"--{prefix}-" if prefix else "--"
    g.add_argument(f"{dash}steps", type=int, default=None,
                   help=f"optimiser steps (default: automatic from the training-set size{budget})")
    g.add_argument(f"{dash}epochs", type=float, default=None,
                   help="passes over the training split instead of --steps (a convenience; converted to steps)")
    g.add_argument(f"{dash}lr", type=float, default=lr, help=f"SGD learning rate, cosine-annealed (default {lr})")
    if not shared:
        return
    g.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay, never on alphas (default 1e-4)")
    g.add_argument("--grad-clip", type=float, default=5.0, help="max gradient norm; 0 disables (default 5)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="cap every stage's automatic or --epochs budget at this many steps (quick runs)")
    g.add_argument("--patience", type=int, default=None,
                   help="validation checks without improvement before a stage stops early; 0 never stops "
                        "(default: each stage's own, 3-4)")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    g.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: NETTAILOR_DEVICE, else cuda when present, else cpu)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def train_kwargs(args: argparse.Namespace, prefix: str = "", defaults: object = None) -> dict:
    """The TrainConfig fields the flags set; unset budget flags keep the stage's own defaults."""
    key = f"{prefix.replace('-', '_')}_" if prefix else ""
    kw = {
        "steps": getattr(args, f"{key}steps"), "epochs": getattr(args, f"{key}epochs"), "lr": getattr(args, f"{key}lr"),
        "batch_size": args.batch_size, "momentum": args.momentum, "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip or None, "workers": args.workers, "seed": args.seed, "device": args.device,
        "progress": not args.no_progress,
    }
    if args.patience is not None:
        kw["patience"] = args.patience or None
    if args.max_steps is not None:
        base = getattr(defaults, "min_steps", 1)
        kw["max_steps"] = args.max_steps
        kw["min_steps"] = min(base, args.max_steps)
    return kw


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--store", default=None,
                   help="store URL: redis://host:port/db or a directory (default NETTAILOR_STORE or .nettailor/store)")
    g.add_argument("--backbone-id", default=None, help="backbone id in the store (default: the store's default)")
    g.add_argument("--backbone-file", type=Path, default=None,
                   help="take the backbone from this file instead of the store: a NetTailor backbone "
                        "(.safetensors from 'nettailor pretrain --out') or a torchvision state dict with --arch")
    g.add_argument("--arch", default="resnet18",
                   help="arch of a plain state dict in --backbone-file (default resnet18)")
    g.add_argument("--stem", default="imagenet", choices=STEMS,
                   help="stem of a plain state dict in --backbone-file (default imagenet)")


def add_student_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("student loss and structure")
    g.add_argument("--k", default="3", help="proxy reach: how many closest earlier nodes feed each layer "
                                            "(1, 3, 5, ... or 'dense'; default 3)")
    g.add_argument("--gamma1", type=float, default=0.3, help="weight of the expected complexity E[C] (default 0.3)")
    g.add_argument("--gamma2", type=float, default=10.0, help="weight of the distillation Omega (default 10)")
    g.add_argument("--frozen-bn", action="store_true",
                   help="use the backbone's BN statistics instead of per-task ones stored in the pack")
    g.add_argument("--input-exclusion", choices=("source", "previous"), default="source",
                   help="E[C] input-exclusion node: the proxy's own source (paper, default) or the previous "
                        "layer's (reference code)")
    g.add_argument("--alpha-lr-scale", type=float, default=1.0, help="alphas' lr relative to --lr (default 1)")
    g.add_argument("--no-teacher-head", action="store_true",
                   help="start the student's classifier from scratch instead of from the teacher's")


def student_kwargs(args: argparse.Namespace) -> dict:
    return {"max_skip": parse_k(args.k), "gamma_complexity": args.gamma1, "gamma_distill": args.gamma2,
            "task_bn": not args.frozen_bn, "input_exclusion": args.input_exclusion,
            "alpha_lr_scale": args.alpha_lr_scale, "init_head_from_teacher": not args.no_teacher_head}


def parse_k(text: str) -> int | None:
    if text.lower() == "dense":
        return None
    try:
        k = int(text)
    except ValueError:
        raise ConfigError(f"--k must be a positive number or 'dense', got {text!r}") from None
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    return k


def parse_sweep(text: str | None) -> tuple[int, ...] | None:
    """'0,2,4' or '0-4' (inclusive) or None (every n)."""
    if not text:
        return None
    try:
        if re.fullmatch(r"\d+-\d+", text):
            a, b = map(int, text.split("-"))
            return tuple(range(a, b + 1))
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ConfigError(f"--sweep must look like '0,2,4' or '0-4', got {text!r}") from None


def default_task_id(dataset: str) -> str:
    name = Path(dataset.partition(":")[2]).name if dataset.startswith("folder:") else dataset.replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("-._") or "task"
