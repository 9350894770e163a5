"""Domain errors of the blockstore, raised in the core and mapped to HTTP once by the server.

The tree::

    NetTailorError                  base of every error this project raises on purpose
    ├── InvalidTaskId               a task id outside ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``
    │   └── InvalidAlias            an alias outside ``[A-Za-z][A-Za-z0-9._-]{0,63}``
    ├── InvalidPlan                 a plan that does not fit its backbone (sources, shapes, dead nodes)
    ├── PackError                   anything wrong with TaskPack bytes
    │   ├── CorruptPack             garbage, truncated bytes, missing keys, wrong shapes, bad JSON
    │   │   └── DigestMismatch      stored pack bytes that no longer hash to their SHA-256 address
    │   ├── UnsupportedFormat       a ``format`` tag this code does not read
    │   ├── BackboneMismatch        a pack trained on another backbone
    │   └── PackTaskMismatch        registering a pack under another task's id
    ├── BackboneError               a backbone that cannot be built or loaded
    │   ├── WeightsUnavailable      weights that cannot be had (offline download, missing file)
    │   └── CorruptBackbone         stored backbone bytes that no longer hash to their id
    ├── NotFound                    something the store does not hold
    │   ├── TaskNotFound
    │   ├── VersionNotFound
    │   ├── AliasNotFound
    │   ├── PackNotFound
    │   └── BackboneNotFound
    ├── StoreConfigError            a store setting that makes no sense (NETTAILOR_KEEP_VERSIONS=0)
    ├── StoreUnavailable            the store cannot be reached (Redis down, directory unwritable) or stays
    │                               contended past the retry bound
    └── CorruptRecord               stored data of an unexpected shape (a WRONGTYPE key, a task record with
                                    missing fields or bad JSON): written by another tool, never by a store

Every error carries a stable machine-readable ``code`` used in ``{"error": code, "detail": text}``.
"""

from __future__ import annotations

__all__ = [
    "AliasNotFound",
    "BackboneError",
    "BackboneMismatch",
    "BackboneNotFound",
    "CorruptBackbone",
    "CorruptPack",
    "CorruptRecord",
    "DigestMismatch",
    "InvalidAlias",
    "InvalidPlan",
    "InvalidTaskId",
    "NetTailorError",
    "NotFound",
    "PackError",
    "PackNotFound",
    "PackTaskMismatch",
    "StoreConfigError",
    "StoreUnavailable",
    "TaskNotFound",
    "UnsupportedFormat",
    "VersionNotFound",
    "WeightsUnavailable",
]


class NetTailorError(Exception):
    """Base class. ``code`` is the stable identifier clients switch on."""

    code = "nettailor_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidTaskId(NetTailorError):
    code = "invalid_task_id"


class InvalidAlias(InvalidTaskId):
    """An alias name outside its pattern: the same kind of bad identifier as a task id."""

    code = "invalid_alias"


class InvalidPlan(NetTailorError):
    code = "invalid_plan"


class PackError(NetTailorError):
    code = "bad_pack"


class CorruptPack(PackError):
    code = "corrupt_pack"


class DigestMismatch(CorruptPack):
    """Stored pack bytes whose SHA-256 is not the address they are stored under (bit rot, a bad copy,
    a hand edit).  The store records the digest as corrupt, so every replica refuses it alike."""

    code = "digest_mismatch"

    def __init__(self, detail: str, sha256: str = "") -> None:
        super().__init__(detail)
        self.sha256 = sha256


class UnsupportedFormat(PackError):
    code = "unsupported_format"


class BackboneMismatch(PackError):
    code = "backbone_mismatch"


class PackTaskMismatch(PackError):
    code = "pack_task_mismatch"


class BackboneError(NetTailorError):
    code = "bad_backbone"


class WeightsUnavailable(BackboneError):
    code = "weights_unavailable"


class CorruptBackbone(BackboneError):
    code = "corrupt_backbone"


class NotFound(NetTailorError):
    code = "not_found"


class TaskNotFound(NotFound):
    code = "task_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class AliasNotFound(NotFound):
    code = "alias_not_found"


class PackNotFound(NotFound):
    code = "pack_not_found"


class BackboneNotFound(NotFound):
    code = "backbone_not_found"


class StoreConfigError(NetTailorError):
    code = "store_config_error"


class StoreUnavailable(NetTailorError):
    code = "store_unavailable"


class CorruptRecord(NetTailorError):
    code = "corrupt_record"
