"""Task ids: the only user-chosen string that becomes a file name or a Redis key."""

from __future__ import annotations

import re

from .errors import InvalidTaskId

__all__ = ["TASK_ID_PATTERN", "validate_task_id"]

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_RE = re.compile(TASK_ID_PATTERN)


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is 1-64 characters of letters, digits, '-', '_' and '.', starting with a
    letter or digit (so never '.', '..' or a hidden file); raise InvalidTaskId otherwise."""
    if not isinstance(task_id, str) or not _RE.fullmatch(task_id):
        raise InvalidTaskId(
            f"invalid task id {task_id!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return task_id
