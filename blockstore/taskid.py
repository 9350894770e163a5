"""Task ids, the only user-chosen string that becomes a file name or a Redis key, and alias names."""

from __future__ import annotations

import re

from .errors import InvalidAlias, InvalidTaskId

__all__ = ["ALIAS_PATTERN", "TASK_ID_PATTERN", "validate_alias", "validate_task_id"]

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RE = re.compile(TASK_ID_PATTERN)
# An alias starts with a letter, so that it never reads as a version number where either may stand
# (the Open Inference Protocol's /versions/{version} path segment).
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{0,63}$"
_ALIAS_RE = re.compile(ALIAS_PATTERN)


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is 1-64 characters of letters, digits, '-', '_' and '.', starting with a
    letter or digit (so never '.', '..' or a hidden file); raise InvalidTaskId otherwise."""
    if not isinstance(task_id, str) or not _RE.fullmatch(task_id):
        raise InvalidTaskId(
            f"invalid task id {task_id!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return task_id


def validate_alias(alias: object) -> str:
    """Return ``alias`` if it is 1-64 letters, digits, '-', '_' and '.', starting with a letter; raise
    InvalidAlias otherwise."""
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        raise InvalidAlias(f"invalid alias {alias!r}: use 1-64 letters, digits, '-', '_' or '.', "
                           "starting with a letter")
    return alias
