"""A task's data: seeded train/validation/test splits of uint8 images, the recorded preprocessing, and the
training augmentation.

Images stay uint8 (the output of :meth:`Preprocess.to_uint8`) until a batch is drawn; then
:meth:`Preprocess.normalize` turns the batch into the float input, exactly as the server does.
The validation split comes from the source (an image folder's ``val/``) or is carved out of train with a
seeded permutation before any subsampling, so it does not depend on ``train_limit``; it gets at least
``val_min`` images (a floor, not only a fraction: with 350 images one image is 0.29 points, and a
0.5-point tolerance would be a coin toss).  The test split is only ever reported, never used to decide.

Augmentation (torchvision ``transforms.v2``, applied per sample in the DataLoader) is chosen per data set
(:data:`AUTO_AUGMENT`) and recorded in the report: a random resized crop for everything, horizontal flips
only where a mirror image keeps its class (never for digits or characters), and colour jitter for colour
data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from blockstore import Preprocess

from .datasets import ImageData, RawData, load_raw
from .errors import ConfigError, DataError

__all__ = [
    "AUGMENTATIONS", "AUTO_AUGMENT", "Augmented", "DataConfig", "TaskData", "augmentation", "load_task",
    "make_task", "normalisation",
]

AUGMENTATIONS = ("none", "crop", "crop-flip")
# Data sets whose mirror image keeps its class may flip; digits and characters never do.  Position-coded
# synthetic test data is not augmented at all.  Image folders: crops, and flips only on request.
AUTO_AUGMENT = {"mnist": "crop", "mnist-01": "crop", "mnist-parity": "crop", "fashion": "crop-flip",
                "fashion-mnist": "crop-flip", "shapes": "crop-flip", "synthetic": "none", "folder": "crop",
                "letters": "crop", "colours": "crop-flip"}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    size: int = 32
    val_fraction: float = 0.1
    val_min: int = 500  # the validation split's floor (capped at a quarter of the training pool)
    test_fraction: float = 0.2  # only for sources without a test split (image folders)
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    cache_dir: str | None = ".nettailor/cache"
    channels: int | None = None  # image folders: 1 (grey) or 3 (colour, the default)
    augment: str = "auto"  # auto (per data set), none, crop or crop-flip

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.size < 8:
            raise ConfigError(f"image size {self.size} is too small (at least 8)")
        for name in ("train_limit", "val_limit", "test_limit", "val_min"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be positive, got {v}")
        if self.augment != "auto" and self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment must be auto or one of {AUGMENTATIONS}, got {self.augment!r}")

    @property
    def augmentation(self) -> str:
        if self.augment != "auto":
            return self.augment
        presets = {AUTO_AUGMENT.get(part.partition(":")[0], "crop") for part in self.dataset.split("+")}
        return presets.pop() if len(presets) == 1 else "crop"  # several sources: flip only if all may


class Augmented(Dataset):
    """``base`` with ``transform`` applied to each uint8 image as it is drawn."""

    def __init__(self, base: Dataset, transform: v2.Transform | None) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[i]
        return (self.transform(img) if self.transform is not None else img), label


def augmentation(name: str, size: int, channels: int) -> v2.Transform | None:
    """The training transform for preset ``name`` on uint8 ``[C, size, size]`` images."""
    if name == "none":
        return None
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.85, 1.18), antialias=True)]
    if name == "crop-flip":
        steps.append(v2.RandomHorizontalFlip())
    if channels == 3:
        steps.append(v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25))
    return v2.Compose(steps)


@dataclass(frozen=True)
class TaskData:
    name: str
    train: ImageData
    val: ImageData
    test: ImageData
    classes: list[str]
    preprocess: Preprocess
    augment: str = "none"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def training_set(self) -> Dataset:
        """The training split with its augmentation, for the DataLoader."""
        pre = self.preprocess
        return Augmented(self.train, augmentation(self.augment, pre.size, pre.channels))

    def summary(self) -> str:
        return (f"{self.name}: {self.num_classes} classes, {len(self.train)} train / {len(self.val)} val / "
                f"{len(self.test)} test images at {self.preprocess.size} px, {self.preprocess.channels} channel(s), "
                f"augmentation {self.augment}")


def _perm(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _take(d: ImageData, limit: int | None) -> ImageData:
    return d if limit is None or limit >= len(d) else d.subset(torch.arange(limit))


def normalisation(data: ImageData, limit: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to ``limit`` of) uint8 images, in [0, 1] units."""
    sample = data if len(data) <= limit else data.subset(_perm(len(data), 0)[:limit])
    images = sample.images
    x = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    mean = tuple(round(float(m), 4) for m in x.mean(1))
    std = tuple(round(max(float(s), 1e-3), 4) for s in x.std(1))
    return mean, std


def make_task(name: str, raw: RawData, config: DataConfig,
              normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> TaskData:
    """Split ``raw`` as ``config`` says.  The input normalisation is ``normalization`` (the backbone's own,
    e.g. ImageNet's, three values each even for grey images), else measured on the training split."""
    train_all, test, val = raw.train, raw.test, raw.val
    if test is None:  # carve a test split first, so validation never overlaps it
        p = _perm(len(train_all), config.seed + 1)
        n_test = max(1, round(config.test_fraction * len(train_all)))
        test, train_all = train_all.subset(p[:n_test]), train_all.subset(p[n_test:])
    if val is None:
        p = _perm(len(train_all), config.seed)
        n_val = max(1, round(config.val_fraction * len(train_all)), min(config.val_min, len(train_all) // 4))
        if len(train_all) - n_val < 1:
            raise DataError(f"{name}: {len(train_all)} training images are too few to carve a validation split")
        val, train = train_all.subset(p[:n_val]), train_all.subset(p[n_val:])
    else:
        train = train_all.subset(_perm(len(train_all), config.seed))
        val = val.subset(_perm(len(val), config.seed + 3))
    test = test.subset(_perm(len(test), config.seed + 2))
    train, val, test = _take(train, config.train_limit), _take(val, config.val_limit), _take(test, config.test_limit)
    if normalization is None:
        mean, std = normalisation(train)
    else:
        mean, std = tuple(map(float, normalization[0])), tuple(map(float, normalization[1]))
    pre = Preprocess(size=config.size, mean=mean, std=std, channels=raw.channels)
    return TaskData(name, train, val, test, list(raw.classes), pre, config.augmentation)


def load_task(config: DataConfig, normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> TaskData:
    cache = Path(config.cache_dir) if config.cache_dir else None
    raw = load_raw(config.dataset, config.size, cache, config.seed, config.channels)
    return make_task(config.dataset, raw, config, normalization)
