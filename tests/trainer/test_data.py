from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import DataConfig, load_task, make_task
from trainer.datasets import _read_idx, load_raw, mnist_dir, synthetic
from trainer.errors import ConfigError, DataError


def test_splits_are_seeded_disjoint_and_independent_of_limits():
    raw = synthetic(4, 32, n_train=200, n_test=40, seed=1)
    a = make_task("s", raw, DataConfig(dataset="s", seed=3))
    b = make_task("s", raw, DataConfig(dataset="s", seed=3, train_limit=50))
    c = make_task("s", raw, DataConfig(dataset="s", seed=4))
    assert len(a.val) == 50 and len(a.train) == 150 and len(b.train) == 50  # the floor: a quarter of 200
    assert torch.equal(a.val.images, b.val.images)  # the validation split does not move with train_limit
    assert not torch.equal(a.val.images, c.val.images)
    train_rows = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val.images)
    assert a.preprocess.channels == 1 and a.preprocess.size == 32
    x = a.preprocess.normalize(a.train.images[:64])
    assert x.shape == (64, 3, 32, 32) and abs(float(x.mean())) < 0.3  # measured normalisation centres the data


def test_validation_floor_and_fraction():
    raw = synthetic(4, 16, n_train=8000, n_test=40)
    assert len(make_task("s", raw, DataConfig(dataset="s")).val) == 800  # 10% of 8000
    assert len(make_task("s", raw, DataConfig(dataset="s", val_min=1000)).val) == 1000  # the floor wins
    small = synthetic(4, 16, n_train=400, n_test=40)
    assert len(make_task("s", small, DataConfig(dataset="s")).val) == 100  # floor capped at a quarter


def test_augmentation_is_chosen_per_data_set_and_keeps_shapes():
    assert DataConfig(dataset="mnist").augmentation == "crop"  # digits never flip
    assert DataConfig(dataset="fashion").augmentation == "crop-flip"
    assert DataConfig(dataset="folder:/x").augmentation == "crop"
    assert DataConfig(dataset="fashion+mnist").augmentation == "crop"  # flip only if every source may
    assert DataConfig(dataset="synthetic:4", augment="crop-flip").augmentation == "crop-flip"
    with pytest.raises(ConfigError):
        DataConfig(augment="mixup")
    raw = synthetic(4, 16, n_train=64, n_test=8)
    task = make_task("s", raw, DataConfig(dataset="s", size=16, augment="crop"))
    ts = task.training_set()
    x, y = ts[0]
    assert x.dtype == torch.uint8 and x.shape == (1, 16, 16) and isinstance(y, int)
    torch.manual_seed(0)
    assert any(not torch.equal(ts[0][0], task.train[0][0]) for _ in range(5))  # it does augment


def test_bad_config_and_unknown_data():
    with pytest.raises(ConfigError):
        DataConfig(val_fraction=0.0)
    with pytest.raises(ConfigError):
        DataConfig(train_limit=0)
    with pytest.raises(DataError, match="unknown data set"):
        load_raw("imagenet-22k")
    with pytest.raises(DataError, match="does not exist"):
        load_raw("folder:/nonexistent/place")
    with pytest.raises(DataError, match="classes"):
        load_raw("synthetic:40")


def _write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_roundtrip_and_truncation(tmp_path):
    arr = np.arange(2 * 5 * 5).reshape(2, 5, 5) % 256
    _write_idx(tmp_path / "x.gz", arr)
    assert np.array_equal(_read_idx(tmp_path / "x.gz"), arr)
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(DataError, match="truncated"):
        _read_idx(tmp_path / "bad.gz")


def test_real_mnist_labels_are_readable():
    labels = _read_idx(mnist_dir() / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def _folder(root, classes=("cats", "dogs"), n=6, size=(40, 30)):
    rng = np.random.default_rng(0)
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        colour = np.array((200, 30, 30)) if i % 2 == 0 else np.array((30, 30, 200))
        for j in range(n):
            arr = np.clip(colour + rng.integers(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{j}.png")


def test_image_folder_streams_from_a_memory_mapped_cache(tmp_path):
    _folder(tmp_path / "imgs")
    cfg = DataConfig(dataset=f"folder:{tmp_path / 'imgs'}", size=16, cache_dir=str(tmp_path / "cache"),
                     val_fraction=0.2, test_fraction=0.25, val_min=1)
    task = load_task(cfg)
    assert task.classes == ["cats", "dogs"] and task.preprocess.channels == 3
    assert len(task.train) + len(task.val) + len(task.test) == 12 and len(task.test) == 3
    assert task.train.images.shape[1:] == (3, 16, 16)
    assert list((tmp_path / "cache").glob("folder-*.npy"))
    again = load_task(cfg)  # from the cache now, memory-mapped
    assert torch.equal(again.train.images, task.train.images)
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(DataError, match="without images"):
        load_task(cfg)


def test_image_folder_split_layouts(tmp_path):
    for split, n in (("train", 8), ("valid", 3), ("test", 4)):
        _folder(tmp_path / "ds" / split, n=n, size=(64, 64))
    task = load_task(DataConfig(dataset=f"folder:{tmp_path / 'ds'}", size=20, cache_dir=None))
    assert (len(task.train), len(task.val), len(task.test)) == (16, 6, 8)  # valid/ is the validation split
    assert task.train.images.shape[1:] == (3, 20, 20)
    # a class folder named like a split is refused, never taken as a class
    _folder(tmp_path / "flat", classes=("cats", "test"))
    with pytest.raises(DataError, match="mixes split folders"):
        load_raw(f"folder:{tmp_path / 'flat'}", 16)
    _folder(tmp_path / "nested" / "train", classes=("cats", "Val"))
    with pytest.raises(DataError, match="named like a split"):
        load_raw(f"folder:{tmp_path / 'nested'}", 16)
    # split folders mixed with class folders
    _folder(tmp_path / "mixed" / "train")
    _folder(tmp_path / "mixed", classes=("birds", "fish"))
    with pytest.raises(DataError, match="mixes split folders"):
        load_raw(f"folder:{tmp_path / 'mixed'}", 16)
    _folder(tmp_path / "noval" / "val")
    with pytest.raises(DataError, match="no train/"):
        load_raw(f"folder:{tmp_path / 'noval'}", 16)


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, caplog):
    _folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    raw = load_raw(f"folder:{tmp_path / 'imgs'}", 16)
    assert len(raw.train) == 12
    assert "unreadable" in caplog.text


def test_folder_images_are_turned_upright_by_their_exif_orientation(tmp_path):
    import io

    from PIL import Image

    from blockstore import Preprocess
    from tests.exif_images import rotated_jpeg, upright_png
    from trainer.datasets import load_raw

    for cls, orientation in (("a", 6), ("b", 8)):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "photo.jpg").write_bytes(rotated_jpeg(orientation))
    raw = load_raw(f"folder:{tmp_path}", size=32, cache_dir=None)
    pre = Preprocess(32, (0.5,) * 3, (0.5,) * 3, channels=3)
    for i, orientation in enumerate((6, 8)):
        jpeg = rotated_jpeg(orientation)
        assert torch.equal(raw.train.images[i], pre.to_uint8(Image.open(io.BytesIO(upright_png(jpeg)))))
        assert not torch.equal(raw.train.images[i],
                               pre.to_uint8(Image.open(io.BytesIO(upright_png(jpeg, apply_exif=False)))))
