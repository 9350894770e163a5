"""Image folders: a user's own data, ``folder:/path``.

Layouts (folder names are matched case-insensitively)::

    root/<class>/<image>                            one pool; validation and test are carved from it
    root/train/<class>/<image>                      + optional root/{val,valid,validation}/ and root/test/

A folder named like a split (train, val, valid, validation, test) is never taken as a class: a layout
that mixes split folders and class folders, or a class folder named like a split, is refused with a
message that says what to rename.  Images of any size (20 to 224 px and beyond) and mode are decoded
once with :meth:`blockstore.Preprocess.to_uint8` (the server's own function) into a uint8 array at the
working size, memory-mapped from ``cache_dir``: training streams rows from disk instead of holding the
folder in RAM.  An unreadable image is skipped with a warning, never silently mislabelled.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from blockstore import Preprocess

from .errors import DataError

__all__ = ["IMAGE_EXTS", "SPLIT_NAMES", "load_folder", "scan_layout"]

log = logging.getLogger(__name__)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}

Tree = list[tuple[str, list[Path]]]


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"cannot list {d}: {e}") from None


def _classes(d: Path) -> Tree:
    out = []
    for c in _subdirs(d):
        if c.name.lower() in SPLIT_NAMES:
            raise DataError(f"{d}: the class folder {c.name!r} is named like a split; rename it, or use the "
                            f"layout root/train/<class>/, root/val/<class>/, root/test/<class>/")
        out.append((c.name, sorted(p for p in c.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)))
    empty = [c for c, files in out if not files]
    if empty:
        raise DataError(f"{d}: class folders without images ({', '.join(sorted(IMAGE_EXTS))}): {empty[:5]}")
    return out


def scan_layout(root: Path) -> dict[str, Tree]:
    """``{"train": tree[, "val": tree][, "test": tree]}``, each tree a list of (class, files)."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    dirs = _subdirs(root)
    splits = {d.name.lower(): d for d in dirs if d.name.lower() in SPLIT_NAMES}
    if not splits:
        return {"train": _classes(root)}
    others = [d.name for d in dirs if d.name.lower() not in SPLIT_NAMES]
    if others:
        raise DataError(f"{root} mixes split folders ({sorted(d.name for d in splits.values())}) with other "
                        f"folders ({others[:5]}); put every class folder under train/ (and val/, test/)")
    found: dict[str, Path] = {}
    for name, d in splits.items():
        split = SPLIT_NAMES[name]
        if split in found:
            raise DataError(f"{root}: both {found[split].name}/ and {d.name}/ are a {split} split; keep one")
        found[split] = d
    if "train" not in found:
        raise DataError(f"{root} has {sorted(d.name for d in found.values())} but no train/ folder")
    return {split: _classes(d) for split, d in found.items()}


def _fingerprint(files: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()[:16]


def _decode(files: list[Path], pre: Preprocess, out: np.ndarray, desc: str) -> np.ndarray:
    """Decode ``files`` into ``out`` row by row; return a bool mask of the rows that decoded."""
    ok = np.ones(len(files), dtype=bool)
    bad: list[str] = []
    for j, p in enumerate(tqdm(files, desc=desc, leave=False, dynamic_ncols=True, disable=len(files) < 500)):
        try:
            with Image.open(p) as im:
                out[j] = pre.to_uint8(im).numpy()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            ok[j] = False
            bad.append(f"{p} ({type(e).__name__}: {e})")
    if bad:
        log.warning("skipping %d unreadable image(s) of %d, e.g. %s", len(bad), len(files), "; ".join(bad[:3]))
    return ok


def _load(files: list[Path], labels: list[int], pre: Preprocess, cache: Path | None, desc: str):
    """(images, labels) tensors, the images memory-mapped from ``cache`` when given."""
    from .datasets import ImageData

    shape = (len(files), pre.channels, pre.size, pre.size)
    key = _fingerprint(files, f"{pre.size}:{pre.channels}")
    if cache is None:
        arr = np.zeros(shape, dtype=np.uint8)
        ok = _decode(files, pre, arr, desc)
        images = torch.from_numpy(arr)
    else:
        cache.mkdir(parents=True, exist_ok=True)
        path, okpath = cache / f"folder-{key}.npy", cache / f"folder-{key}.ok.npy"
        if not (path.is_file() and okpath.is_file()):
            tmp = cache / f"folder-{key}.tmp.npy"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            ok = _decode(files, pre, arr, desc)
            arr.flush()
            del arr
            np.save(okpath, ok)
            tmp.replace(path)
        ok = np.load(okpath)
        images = torch.from_numpy(np.load(path, mmap_mode="c"))  # copy-on-write: pages stay on disk
    index = torch.from_numpy(np.flatnonzero(ok)).to(torch.int64)
    if len(index) == 0:
        raise DataError(f"none of the {len(files)} images could be read")
    return ImageData(images, torch.tensor(labels, dtype=torch.int64), index if len(index) < len(files) else None)


def load_folder(root: Path, size: int, channels: int, cache: Path | None):
    """The folder at ``root`` as (train, val | None, test | None, classes)."""
    layout = scan_layout(root)
    classes = [c for c, _ in layout["train"]]
    if len(classes) < 2:
        raise DataError(f"{root}: need at least two class folders, found {classes}")
    pre = Preprocess(size=size, mean=(0.5,) * channels, std=(0.5,) * channels, channels=channels)
    where = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, tree in layout.items():
        unknown = [c for c, _ in tree if c not in where]
        if unknown:
            raise DataError(f"{root}/{split}: classes {unknown[:5]} are not in the training split")
        files = [p for _, ps in tree for p in ps]
        labels = [where[c] for c, ps in tree for _ in ps]
        out[split] = _load(files, labels, pre, cache, f"decoding {split}")
    return out["train"], out.get("val"), out.get("test"), classes
