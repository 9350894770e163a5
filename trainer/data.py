"""A task's data: seeded train/validation/test splits of uint8 images plus the recorded preprocessing.

Images stay uint8 (the output of :meth:`Preprocess.to_uint8`) until a batch is drawn; then
:meth:`Preprocess.normalize` turns the batch into the float input, exactly as the server does.
The validation split is carved out of train with a seeded permutation before any subsampling, so it
does not depend on ``train_limit``.  The test split is only ever reported, never used to decide.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from blockstore import Preprocess

from .datasets import ImageData, RawData, load_raw
from .errors import ConfigError, DataError

__all__ = ["DataConfig", "TaskData", "batches", "load_task", "make_task", "normalisation"]


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    size: int = 32
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # only for sources without a test split (image folders)
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    cache_dir: str | None = ".nettailor/cache"
    channels: int | None = None  # image folders: 1 (grey) or 3 (colour, the default)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.size < 8:
            raise ConfigError(f"image size {self.size} is too small (at least 8)")
        for name in ("train_limit", "val_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be positive, got {v}")


@dataclass(frozen=True)
class TaskData:
    name: str
    train: ImageData
    val: ImageData
    test: ImageData
    classes: list[str]
    preprocess: Preprocess

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> str:
        return (f"{self.name}: {self.num_classes} classes, {len(self.train)} train / {len(self.val)} val / "
                f"{len(self.test)} test images at {self.preprocess.size} px, {self.preprocess.channels} channel(s)")


def _perm(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _take(d: ImageData, limit: int | None) -> ImageData:
    return d if limit is None or limit >= len(d) else d.subset(torch.arange(limit))


def normalisation(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (what Preprocess expects)."""
    x = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = tuple(round(float(m), 4) for m in x.mean(1))
    std = tuple(round(max(float(s), 1e-3), 4) for s in x.std(1))
    return mean, std


def make_task(name: str, raw: RawData, config: DataConfig,
              normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> TaskData:
    """Split ``raw`` as ``config`` says.  The input normalisation is ``normalization`` (the backbone's own,
    e.g. ImageNet's, three values each even for grey images), else measured on the training split."""
    train_all = raw.train
    test = raw.test
    if test is None:  # carve a test split first, so validation never overlaps it
        p = _perm(len(train_all), config.seed + 1)
        n_test = max(1, round(config.test_fraction * len(train_all)))
        test, train_all = train_all.subset(p[:n_test]), train_all.subset(p[n_test:])
    p = _perm(len(train_all), config.seed)
    n_val = max(1, round(config.val_fraction * len(train_all)))
    if len(train_all) - n_val < 1:
        raise DataError(f"{name}: {len(train_all)} training images are too few to carve a validation split")
    val, train = train_all.subset(p[:n_val]), train_all.subset(p[n_val:])
    test = test.subset(_perm(len(test), config.seed + 2))
    train, val, test = _take(train, config.train_limit), _take(val, config.val_limit), _take(test, config.test_limit)
    if normalization is None:
        mean, std = normalisation(train.images)
    else:
        mean, std = tuple(map(float, normalization[0])), tuple(map(float, normalization[1]))
    pre = Preprocess(size=config.size, mean=mean, std=std, channels=raw.channels)
    return TaskData(name, train, val, test, list(raw.classes), pre)


def load_task(config: DataConfig, normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> TaskData:
    cache = Path(config.cache_dir) if config.cache_dir else None
    raw = load_raw(config.dataset, config.size, cache, config.seed, config.channels)
    return make_task(config.dataset, raw, config, normalization)


def batches(data: ImageData, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """(uint8 images, labels) batches; normalise them with ``TaskData.preprocess.normalize`` on the device."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield data.images[idx], data.labels[idx]
