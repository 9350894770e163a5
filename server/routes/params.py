"""Path parameters shared by the routers: one definition, so the OpenAPI document states one pattern."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from blockstore import ALIAS_PATTERN, TASK_ID_PATTERN

__all__ = ["AliasName", "TaskId"]

# A mismatch is answered 422 invalid_task_id (server/errors.py), as the core's own check would.
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN, description="task id: 1-64 letters, digits, '-', '_' or "
                             "'.', starting with a letter or digit")]
# No pattern here: the core's check answers 422 invalid_alias with the rule (blockstore.taskid).
AliasName = Annotated[str, Path(description=f"alias, {ALIAS_PATTERN}: a named pointer to a version")]
