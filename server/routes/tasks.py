"""Task management: list, describe, register (PUT pack bytes), delete, roll back, aliases.  Mutations need
the token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from ..deps import SettingsDep, TasksDep, require_operator
from ..errors import BadImage, error_responses
from ..images import read_body
from ..schemas import Aliases, AliasRequest, Registered, RollbackRequest, TaskDetail, TaskList
from .params import AliasName, TaskId

__all__ = ["router"]

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
_operator = [Depends(require_operator)]
_PACK_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("", response_model=TaskList, responses=error_responses(503), summary="List tasks")
async def list_tasks(tasks: TasksDep) -> TaskList:
    return await tasks.list()


@router.get("/{task_id}", response_model=TaskDetail, responses=error_responses(404, 422, 503),
            summary="Describe a task: architecture, cost, accuracy, history")
async def get_task(task_id: TaskId, tasks: TasksDep) -> TaskDetail:
    return await tasks.detail(task_id)


@router.put("/{task_id}", response_model=Registered, dependencies=_operator, openapi_extra=_PACK_BODY,
            responses={201: {"model": Registered, "description": "a new task"},
                       **error_responses(401, 403, 409, 413, 422, 503)},
            summary="Register a pack (raw bytes) as the task's new version")
async def put_task(task_id: TaskId, request: Request, response: Response, tasks: TasksDep,
                   settings: SettingsDep) -> Registered:
    data = await read_body(request, settings.max_pack_bytes)
    if not data:
        raise BadImage("the body is empty: send the pack bytes")
    reg, created = await tasks.register(task_id, data)
    response.status_code = 201 if created else 200
    return reg


@router.delete("/{task_id}", status_code=204, response_class=Response, dependencies=_operator,
               responses=error_responses(401, 403, 404, 422, 503), summary="Delete a task and its history")
async def delete_task(task_id: TaskId, tasks: TasksDep) -> Response:
    await tasks.delete(task_id)
    return Response(status_code=204)


@router.post("/{task_id}/rollback", response_model=Registered, dependencies=_operator,
             responses=error_responses(401, 403, 404, 422, 503), summary="Point the task at an earlier version")
async def rollback_task(task_id: TaskId, body: RollbackRequest, tasks: TasksDep) -> Registered:
    return await tasks.rollback(task_id, body.version)


@router.put("/{task_id}/aliases/{alias}", response_model=Aliases, dependencies=_operator,
            responses=error_responses(401, 403, 404, 422, 503),
            summary="Point an alias (production, canary, ...) at a stored version")
async def put_alias(task_id: TaskId, alias: AliasName, body: AliasRequest, tasks: TasksDep) -> Aliases:
    return await tasks.set_alias(task_id, alias, body.version)


@router.delete("/{task_id}/aliases/{alias}", status_code=204, response_class=Response, dependencies=_operator,
               responses=error_responses(401, 403, 404, 422, 503), summary="Remove an alias")
async def delete_alias(task_id: TaskId, alias: AliasName, tasks: TasksDep) -> Response:
    await tasks.delete_alias(task_id, alias)
    return Response(status_code=204)
