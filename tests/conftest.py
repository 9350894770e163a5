"""Shared fixtures: tiny real models (ResNet-10, one block per stage, 32 px) and the real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch

from blockstore import Backbone, BackboneConfig, DirStore, Plan, Preprocess, RedisStore, TailoredNet, TaskPack
from blockstore.testing import randomize

__all__ = ["TINY", "make_backbone", "randomize"]

torch.set_num_threads(2)
# Apps built by the tests run the executor in-process: an executor process per app would add a
# torch import to each of them.  tests/server/test_engine.py runs that mode, and the fault suite's
# replicas (tests/faults) run with it on, as `nettailor serve` does by default.
os.environ.setdefault("NETTAILOR_EXECUTOR_PROCESS", "0")

TINY = BackboneConfig(arch="resnet10", stem="3x3s2", input_size=32, num_classes=10)


def make_backbone(seed: int = 0, config: BackboneConfig = TINY) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(config).freeze().eval()


@pytest.fixture(scope="session")
def backbone() -> Backbone:
    return make_backbone()


@pytest.fixture(scope="session")
def other_backbone() -> Backbone:
    return make_backbone(seed=1)




PackFactory = Callable[..., TaskPack]


@pytest.fixture
def make_pack(backbone: Backbone) -> PackFactory:
    def factory(task_id: str = "digits", num_classes: int = 3, seed: int = 0, plan: Plan | None = None,
                bb: Backbone | None = None, version: str = "1") -> TaskPack:
        b = bb or backbone
        plan = plan or Plan.full(b.spec, 3, bottleneck=b.bottleneck)
        net = randomize(TailoredNet(b, plan, num_classes), seed)
        labels = [f"class-{i}" for i in range(num_classes)]
        return TaskPack.from_net(net, task_id, labels, Preprocess(size=32), version=version,
                                 metrics={"val_acc": 0.9, "test_acc": 0.89})

    return factory


@pytest.fixture
def redis_store() -> Iterator[RedisStore]:
    """A RedisStore on the real server, under a unique key prefix that is deleted afterwards."""
    prefix = f"nt-test-{uuid.uuid4().hex[:8]}:"
    store = RedisStore("redis://127.0.0.1:6379/0", prefix=prefix)
    try:
        store.ping()
    except Exception as e:  # pragma: no cover - CI starts Redis; a dev box may not
        pytest.fail(f"Redis on 127.0.0.1:6379 is required for this test: {e}")
    yield store
    client = store._client
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    store.close()


@pytest.fixture
def dir_store(tmp_path) -> DirStore:
    return DirStore(tmp_path / "store", poll_interval=0.05)


def flip_stored_byte(store: DirStore | RedisStore, sha: str, offset: int) -> None:
    """Flip one byte of a stored pack in place, keeping its length (bit rot)."""
    if isinstance(store, DirStore):
        path = store.root / "packs" / f"{sha}.pack"
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        key = store._k("pack", sha)
        byte = store._client.getrange(key, offset, offset)
        store._client.setrange(key, offset, bytes([byte[0] ^ 0xFF]))
