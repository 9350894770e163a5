from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import DataConfig, batches, load_task, make_task
from trainer.datasets import _read_idx, load_raw, mnist_dir, synthetic
from trainer.errors import ConfigError, DataError


def test_splits_are_seeded_disjoint_and_independent_of_limits():
    raw = synthetic(4, 32, n_train=200, n_test=40, seed=1)
    a = make_task("s", raw, DataConfig(dataset="s", seed=3))
    b = make_task("s", raw, DataConfig(dataset="s", seed=3, train_limit=50))
    c = make_task("s", raw, DataConfig(dataset="s", seed=4))
    assert len(a.val) == 20 and len(a.train) == 180 and len(b.train) == 50
    assert torch.equal(a.val.images, b.val.images)  # the validation split does not move with train_limit
    assert not torch.equal(a.val.images, c.val.images)
    train_rows = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train_rows for x in a.val.images)
    assert a.preprocess.channels == 1 and a.preprocess.size == 32
    x = a.preprocess.normalize(a.train.images[:64])
    assert x.shape == (64, 3, 32, 32) and abs(float(x.mean())) < 0.3  # measured normalisation centres the data


def test_batches_cover_everything_once():
    raw = synthetic(3, 16, n_train=50, n_test=10)
    seen = torch.cat([y for _, y in batches(raw.train, 8, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert len(seen) == 50 and sorted(seen.tolist()) == sorted(raw.train.labels.tolist())
    assert sum(1 for _ in batches(raw.train, 8, drop_last=True)) == 6


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


def test_image_folder_with_cache(tmp_path):
    rng = np.random.default_rng(0)
    for cls, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            arr = np.clip(np.array(colour) + rng.integers(0, 20, (40, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    cfg = DataConfig(dataset=f"folder:{tmp_path / 'imgs'}", size=16, cache_dir=str(tmp_path / "cache"),
                     val_fraction=0.2, test_fraction=0.25)
    task = load_task(cfg)
    assert task.classes == ["cats", "dogs"] and task.preprocess.channels == 3
    assert len(task.train) + len(task.val) + len(task.test) == 12 and len(task.test) == 3
    assert task.train.images.shape[1:] == (3, 16, 16)
    assert list((tmp_path / "cache").glob("*.safetensors"))
    again = load_task(cfg)  # from the cache now
    assert torch.equal(again.train.images, task.train.images)
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(DataError, match="without images"):
        load_task(cfg)


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
