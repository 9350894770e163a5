"""Path parameters shared by the routers: one definition, so the OpenAPI document states one pattern."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from blockstore import TASK_ID_PATTERN

__all__ = ["TaskId"]

# A mismatch is answered 422 invalid_task_id (server/errors.py), as the core's own check would.
TaskId = Annotated[str, Path(pattern=TASK_ID_PATTERN, description="task id: 1-64 letters, digits, '-', '_' or "
                             "'.', starting with a letter or digit")]
