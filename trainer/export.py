"""From a trained TailoredNet to TaskPack bytes, files and stores.

Work-dir nets (student, pruned candidates) use the TaskPack format too: safetensors tensors plus JSON
metadata (plan, labels, preprocessing), so every stage's output is a loadable, validated pack.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from blockstore import Backbone, Plan, Preprocess, TailoredNet, TaskPack, TaskRecord, bn_buffers_per_block, open_store
from blockstore.errors import BackboneNotFound, CorruptPack

from .data import TaskData
from .errors import CheckpointError

__all__ = ["cost_metrics", "load_net", "make_pack", "publish", "save_net", "write_json"]

log = logging.getLogger(__name__)


def cost_metrics(plan: Plan, backbone: Backbone, num_classes: int) -> dict:
    """Parameters, FLOPs and blocks of ``plan``, plus the share of the universal blocks it removes."""
    spec = backbone.spec
    cost = plan.cost(spec, num_classes, bn_buffers_per_block(backbone))
    kept_block_params = sum(spec.blocks[l - 1].params for l in plan.blocks_kept)
    d: dict = cost.as_dict()
    d["params"] = cost.shared_params + cost.task_params
    d["blocks_params_removed"] = 1.0 - kept_block_params / spec.blocks_params
    d["flops_removed"] = 1.0 - cost.flops / cost.backbone_flops
    return d


def make_pack(net: TailoredNet, task_id: str, data: TaskData, metrics: dict | None = None,
              version: str = "1") -> TaskPack:
    return TaskPack.from_net(net.eval(), task_id, data.classes, data.preprocess, version=version,
                             metrics=metrics or {})


def save_net(path: Path, net: TailoredNet, task_id: str, labels: list[str], preprocess: Preprocess,
             metrics: dict | None = None) -> bytes:
    """Write ``net`` as pack bytes to ``path`` (atomically); return the bytes."""
    data_bytes = TaskPack.from_net(net.eval(), task_id, labels, preprocess, metrics=metrics or {}).to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data_bytes)
    tmp.replace(path)
    return data_bytes


def load_net(path: Path, backbone: Backbone) -> tuple[TailoredNet, TaskPack]:
    """A net saved with :func:`save_net` (or any pack), rebuilt on ``backbone``."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        pack = TaskPack.from_bytes(path.read_bytes())
    except CorruptPack as e:
        raise CheckpointError(f"{path} is not a usable pack: {e.detail}") from None
    return pack.build(backbone), pack


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def publish(pack: bytes, store_url: str | None = None, backbone: bytes | None = None) -> TaskRecord:
    """Register ``pack`` with the store at ``store_url`` (None: NETTAILOR_STORE or ./.nettailor/store).

    With ``backbone`` bytes, store them too (not as the default), so the server can load the pack.
    """
    info = TaskPack.from_bytes(pack)
    store = open_store(store_url)
    try:
        if backbone is not None:
            store.put_backbone(backbone, make_default=False)
        try:
            store.get_backbone(info.backbone_id)
        except BackboneNotFound:
            log.warning("store %s does not hold backbone %s...; the server cannot load task %r until it does",
                        store.url, info.backbone_id[:12], info.task_id)
        record, changed = store.register(info.task_id, pack)
    finally:
        store.close()
    log.info("%s task %r as version %d in %s", "registered" if changed else "unchanged", info.task_id,
             record.version, store.url)
    return record
