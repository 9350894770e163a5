"""The contract between trainer and server: universal blocks, proxies, plans, task packs and stores.

It imports neither trainer nor server.
"""

from __future__ import annotations

from .backbone import (
    ARCHS,
    STEMS,
    Backbone,
    BackboneConfig,
    BackboneInfo,
    BackboneSpec,
    BlockSpec,
    NodeSpec,
    Normalization,
    validate_backbone_bytes,
)
from .device import load_resident, resolve_device
from .errors import (
    AliasNotFound,
    BackboneError,
    BackboneMismatch,
    BackboneNotFound,
    CorruptBackbone,
    CorruptPack,
    CorruptRecord,
    DigestMismatch,
    InvalidAlias,
    InvalidPlan,
    InvalidTaskId,
    NetTailorError,
    NotFound,
    PackError,
    PackNotFound,
    PackTaskMismatch,
    StoreConfigError,
    StoreUnavailable,
    TaskNotFound,
    UnsupportedFormat,
    VersionNotFound,
    WeightsUnavailable,
)
from .pack import PACK_FORMAT, PackInfo, TaskPack, read_pack_info
from .plan import LayerPlan, Plan, PlanCost, ProxySpec
from .preprocess import Preprocess
from .proxy import Proxy
from .stores import (
    ALIAS_EVENTS,
    DEFAULT_KEEP_VERSIONS,
    AliasChange,
    DirStore,
    GcReport,
    RedisStore,
    Store,
    StoreEvent,
    TaskRecord,
    VersionRecord,
    open_store,
)
from .tailored import TailoredNet, bn_buffers_per_block
from .taskid import ALIAS_PATTERN, TASK_ID_PATTERN, validate_alias, validate_task_id
from .weights import IMAGENET_NORMALIZATION, import_backbone, load_backbone

__all__ = [
    "ALIAS_EVENTS", "ALIAS_PATTERN", "ARCHS", "DEFAULT_KEEP_VERSIONS", "IMAGENET_NORMALIZATION", "PACK_FORMAT",
    "STEMS", "TASK_ID_PATTERN", "AliasChange", "AliasNotFound", "InvalidAlias",
    "Backbone", "BackboneConfig", "BackboneError", "BackboneInfo", "BackboneMismatch", "BackboneNotFound",
    "BackboneSpec", "BlockSpec", "CorruptBackbone", "CorruptPack", "CorruptRecord", "DigestMismatch",
    "DirStore", "GcReport", "InvalidPlan", "InvalidTaskId", "LayerPlan", "NetTailorError", "NodeSpec",
    "Normalization", "NotFound", "PackError", "PackInfo", "PackNotFound", "PackTaskMismatch", "Plan",
    "PlanCost", "Preprocess", "Proxy", "ProxySpec", "RedisStore", "Store", "StoreConfigError", "StoreEvent",
    "StoreUnavailable", "TailoredNet", "TaskNotFound", "TaskPack", "TaskRecord", "UnsupportedFormat",
    "VersionNotFound", "VersionRecord", "WeightsUnavailable", "bn_buffers_per_block", "import_backbone",
    "load_backbone", "load_resident", "open_store", "read_pack_info", "resolve_device",
    "validate_alias", "validate_backbone_bytes", "validate_task_id",
]
