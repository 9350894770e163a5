"""One description per API call, shared by the sync and the async client.

A ``Call`` says what to send and how to read the answer; the clients only add I/O, retries and the
error mapping.  Keeping this sans-I/O is what stops ``Client`` and ``AsyncClient`` from drifting apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import pydantic

from .errors import ServerUnreachable, Timeout, TransportError, UnexpectedResponse
from .images import ImageInput, encode_image
from .models import Aliases, BatchPrediction, MultiPrediction, Prediction, Registered, TaskDetail, TaskSummary

T = TypeVar("T")

NEXT_TASK_HEADER = "X-NetTailor-Next-Task"
DEFAULT_URL = "http://127.0.0.1:8000"

PackInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


@dataclass
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    content: bytes | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def request_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": self.params, "headers": self.headers}
        if self.files is not None:
            kw["files"] = self.files
        if self.content is not None:
            kw["content"] = self.content
        if self.json is not None:
            kw["json"] = self.json
        return kw


def _task_path(task_id: str, suffix: str = "") -> str:
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"a task id must be a non-empty string, not {task_id!r}")
    return f"/v1/tasks/{quote(task_id, safe='')}{suffix}"


def _model(cls: type[pydantic.BaseModel]) -> Callable[[httpx.Response], Any]:
    def parse(response: httpx.Response) -> Any:
        try:
            return cls.model_validate_json(response.content)
        except pydantic.ValidationError as e:
            raise UnexpectedResponse(f"{response.request.method} {response.request.url.path}: {e}") from e

    return parse


def _task_list(response: httpx.Response) -> list[TaskSummary]:
    try:
        return [TaskSummary.model_validate(t) for t in response.json()["tasks"]]
    except (ValueError, KeyError, TypeError, pydantic.ValidationError) as e:
        raise UnexpectedResponse(f"GET /v1/tasks: {e}") from e


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        return dict(response.json())
    except (ValueError, TypeError) as e:
        raise UnexpectedResponse(f"{response.request.url.path}: not a JSON object: {e}") from e


def _none(response: httpx.Response) -> None:
    return None


def _hint(next_task: str | None) -> dict[str, str]:
    return {NEXT_TASK_HEADER: next_task} if next_task else {}


def pin_params(version: int | None, alias: str | None) -> dict[str, Any]:
    """``?version=`` or ``?alias=``: which stored version of a task answers (default: the current one)."""
    if version is not None and alias is not None:
        raise ValueError("name a version or an alias, not both")
    if version is not None:
        if isinstance(version, bool) or int(version) < 1:
            raise ValueError(f"a version is a positive integer, not {version!r}")
        return {"version": int(version)}
    return {"alias": alias} if alias is not None else {}


def predict(task_id: str, image: ImageInput, top_k: int, next_task: str | None, *,
            version: int | None = None, alias: str | None = None) -> Call[Prediction]:
    return Call("POST", _task_path(task_id, "/predict"), _model(Prediction),
                params={"top_k": top_k, **pin_params(version, alias)},
                files=[("file", encode_image(image))], headers=_hint(next_task))


def predict_batch(task_id: str, images: Iterable[ImageInput], top_k: int, next_task: str | None, *,
                  version: int | None = None, alias: str | None = None) -> Call[BatchPrediction]:
    files = [("files", encode_image(im, f"image{i}")) for i, im in enumerate(images)]
    if not files:
        raise ValueError("predict_batch needs at least one image")
    return Call("POST", _task_path(task_id, "/predict_batch"), _model(BatchPrediction),
                params={"top_k": top_k, **pin_params(version, alias)}, files=files, headers=_hint(next_task))


def predict_multi(image: ImageInput, tasks: str | Sequence[str], top_k: int, next_task: str | None, *,
                  version: int | None = None, alias: str | None = None) -> Call[MultiPrediction]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not names or not all(names):
        raise ValueError(f"predict_multi needs one or more task ids, not {tasks!r}")
    return Call("POST", "/v1/predict", _model(MultiPrediction),
                params={"tasks": ",".join(names), "top_k": top_k, **pin_params(version, alias)},
                files=[("file", encode_image(image))], headers=_hint(next_task))


def prefetch(task_id: str) -> Call[None]:
    return Call("POST", _task_path(task_id, "/prefetch"), _none)


def list_tasks() -> Call[list[TaskSummary]]:
    return Call("GET", "/v1/tasks", _task_list)


def get_task(task_id: str) -> Call[TaskDetail]:
    return Call("GET", _task_path(task_id), _model(TaskDetail))


def _read_pack(pack: PackInput) -> bytes:
    if isinstance(pack, (bytes, bytearray, memoryview)):
        return bytes(pack)
    if isinstance(pack, (str, os.PathLike)):
        with open(pack, "rb") as f:
            return f.read()
    if callable(getattr(pack, "read", None)):
        return bytes(pack.read())
    raise TypeError(f"a pack is a path, bytes or a binary file object, not {type(pack).__name__}")


def register(task_id: str, pack: PackInput) -> Call[Registered]:
    return Call("PUT", _task_path(task_id), _model(Registered), content=_read_pack(pack),
                headers={"Content-Type": "application/octet-stream"})


def delete(task_id: str) -> Call[None]:
    return Call("DELETE", _task_path(task_id), _none)


def rollback(task_id: str, version: int) -> Call[Registered]:
    return Call("POST", _task_path(task_id, "/rollback"), _model(Registered), json={"version": int(version)})


def _alias_path(task_id: str, alias: str) -> str:
    if not isinstance(alias, str) or not alias:
        raise ValueError(f"an alias must be a non-empty string, not {alias!r}")
    return _task_path(task_id, f"/aliases/{quote(alias, safe='')}")


def set_alias(task_id: str, alias: str, version: int) -> Call[Aliases]:
    return Call("PUT", _alias_path(task_id, alias), _model(Aliases), json={"version": int(version)})


def delete_alias(task_id: str, alias: str) -> Call[None]:
    return Call("DELETE", _alias_path(task_id, alias), _none)


def health() -> Call[dict[str, Any]]:
    return Call("GET", "/healthz", _json)


# -- waiting for a server ---------------------------------------------------------------------------


def ready() -> Call[dict[str, Any]]:
    """``/readyz``: 200 once the universal blocks are loaded and the store answers, 503 before."""
    return Call("GET", "/readyz", _json)


class ReadyWait:
    """The clock of :meth:`Client.wait_ready`: how long to sleep after each failed poll, and the
    :class:`Timeout` once ``timeout`` seconds have passed."""

    def __init__(self, base_url: str, timeout: float, interval: float) -> None:
        if timeout < 0 or interval <= 0:
            raise ValueError("timeout must be >= 0 and interval > 0")
        self.base_url, self.timeout, self.interval = base_url, timeout, interval
        self.deadline = time.monotonic() + timeout

    def delay(self, error: Exception) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout(f"{self.base_url} was not ready after {self.timeout:g} s; last answer: {error}") from error
        return min(self.interval, left)


def client_headers(token: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    from . import __version__

    headers = {"User-Agent": f"nettailor-client/{__version__}", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    headers.update(extra or {})
    return headers


def resolve(base_url: str | None, token: str | None) -> tuple[str, str | None]:
    """Fill the base URL and the token from NETTAILOR_URL and NETTAILOR_TOKEN when not given."""
    url = base_url or os.environ.get("NETTAILOR_URL") or DEFAULT_URL
    tok = token if token is not None else (os.environ.get("NETTAILOR_TOKEN") or None)
    return url.rstrip("/"), tok


def transport_error(e: httpx.TransportError, base_url: str) -> TransportError:
    if isinstance(e, httpx.TimeoutException):
        return Timeout(f"{base_url}: timed out ({type(e).__name__}): {e}")
    return ServerUnreachable(f"{base_url}: cannot reach the server ({type(e).__name__}): {e}")
