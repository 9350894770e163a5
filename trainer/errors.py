"""Trainer errors.  All derive from :class:`blockstore.errors.NetTailorError`, so the ``nettailor`` CLI
prints ``error [code]: detail`` and exits 2.

The tree::

    NetTailorError (blockstore)
    └── TrainerError                 anything the training procedure refuses to do
        ├── ConfigError              bad arguments: out-of-range values, unknown options
        ├── DataError                missing or unreadable data, unknown data set names
        └── CheckpointError          a work dir whose files do not fit the run resuming from it
"""

from __future__ import annotations

from blockstore.errors import NetTailorError

__all__ = ["CheckpointError", "ConfigError", "DataError", "TrainerError"]


class TrainerError(NetTailorError):
    code = "trainer_error"


class ConfigError(TrainerError):
    code = "bad_config"


class DataError(TrainerError):
    code = "data_error"


class CheckpointError(TrainerError):
    code = "bad_checkpoint"
