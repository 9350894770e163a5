"""Folder and stream prediction: many files through ``predict_batch``, several requests in flight.

::

    from nettailor_client import Client
    from nettailor_client.folder import find_images, predict_files

    with Client() as client:
        for r in predict_files(client, ["digits"], find_images(["photos/"], recursive=True)):
            print(r.image, r.prediction.top.label if r.prediction else r.error)

Results come back in input order.  A batch that the server refuses because of one bad image is
retried file by file, so that image gets an error row and the others their answers; an error about
the task itself (unknown task, server down) stops the run.  :class:`ResultWriter` prints the results
as a table, CSV or JSON lines, shared by ``nettailor-client predict`` and the local ``nettailor predict``.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ._format import PREDICTION_HEADERS, prediction_rows, table
from .errors import ImageError
from .models import Prediction

if TYPE_CHECKING:
    from .client import Client

__all__ = ["FORMATS", "IMAGE_SUFFIXES", "FileResult", "Progress", "ResultWriter", "find_images", "predict_files"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
FORMATS = ("table", "csv", "jsonl")


@dataclass(frozen=True)
class FileResult:
    """One image through one task: a prediction, or an error code and its detail."""

    image: str
    task_id: str
    prediction: Prediction | None = None
    error: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.prediction is not None:
            return {"image": self.image, **self.prediction.model_dump()}
        return {"image": self.image, "task_id": self.task_id, "error": self.error, "detail": self.detail}


def find_images(paths: Iterable[str], *, recursive: bool = False) -> list[str]:
    """Files named directly, plus the JPEG/PNG/WebP files in named folders (their subfolders too with
    ``recursive``), sorted per folder.  ``-`` reads more paths from standard input, one per line.
    A path that does not exist raises FileNotFoundError before anything is sent."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out += find_images([line.strip() for line in sys.stdin if line.strip()], recursive=recursive)
            continue
        path = Path(p)
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            out += sorted(str(f) for f in found if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif path.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def _read(path: str) -> bytes | FileResult:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return FileResult(path, "", error="unreadable", detail=str(e))


def _one_by_one(client: Client, task_id: str, files: Sequence[str], blobs: Sequence[bytes],
                top_k: int, pin: dict[str, Any]) -> list[FileResult]:
    out = []
    for path, blob in zip(files, blobs):
        try:
            out.append(FileResult(path, task_id, client.predict(task_id, blob, top_k=top_k, **pin)))
        except ImageError as e:
            out.append(FileResult(path, task_id, error=e.code or "bad_image", detail=e.detail))
    return out


def _batch(client: Client, task_id: str, files: Sequence[str], top_k: int, pin: dict[str, Any]) -> list[FileResult]:
    read = {p: _read(p) for p in files}
    ok = [p for p in files if isinstance(read[p], bytes)]
    blobs: list[bytes] = [read[p] for p in ok]  # type: ignore[misc]
    done: dict[str, FileResult] = {p: r for p, r in read.items() if isinstance(r, FileResult)}
    if ok:
        try:
            batch = client.predict_batch(task_id, blobs, top_k=top_k, **pin)
        except ImageError:  # one bad file spoils the request: find it
            results = _one_by_one(client, task_id, ok, blobs, top_k, pin)
        else:
            results = [FileResult(p, task_id, Prediction(task_id=batch.task_id, version=batch.version,
                                                         pack_version=batch.pack_version, predictions=labels,
                                                         timings_ms=batch.timings_ms))
                       for p, labels in zip(ok, batch.results)]
        done.update((r.image, r) for r in results)
    return [done[p] for p in files]


def _multi(client: Client, task_ids: Sequence[str], path: str, top_k: int, pin: dict[str, Any]) -> list[FileResult]:
    blob = _read(path)
    if isinstance(blob, FileResult):
        return [FileResult(path, t, error=blob.error, detail=blob.detail) for t in task_ids]
    try:
        multi = client.predict_multi(blob, task_ids, top_k=top_k, **pin)
    except ImageError as e:
        return [FileResult(path, t, error=e.code or "bad_image", detail=e.detail) for t in task_ids]
    return [FileResult(path, t, multi.results[t]) for t in task_ids if t in multi.results]


def predict_files(client: Client, task_ids: Sequence[str], files: Sequence[str], *, batch_size: int = 32,
                  concurrency: int = 4, top_k: int = 5, on_progress: Callable[[int], None] | None = None,
                  version: int | None = None, alias: str | None = None) -> Iterator[FileResult]:
    """Every file through every task, in input order.  One task: ``predict_batch`` over ``batch_size``
    files per request; several: one ``predict_multi`` per file.  ``concurrency`` requests are in flight
    at once (the client's connection pool is shared; the server batches across them too).
    ``on_progress(n)`` is called as each group of ``n`` files finishes.  ``version`` or ``alias`` pins
    the stored version that answers (see :meth:`Client.predict`)."""
    pin: dict[str, Any] = {"version": version, "alias": alias}
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be at least 1")
    if not task_ids:
        raise ValueError("name at least one task")
    if len(task_ids) == 1:
        groups: list[list[str]] = [list(files[i:i + batch_size]) for i in range(0, len(files), batch_size)]

        def job(group: list[str]) -> list[FileResult]:
            return _batch(client, task_ids[0], group, top_k, pin)
    else:
        groups = [[f] for f in files]

        def job(group: list[str]) -> list[FileResult]:
            return _multi(client, task_ids, group[0], top_k, pin)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="nettailor-predict") as pool:
        todo = iter(groups)
        pending: deque[tuple[int, Future[list[FileResult]]]] = deque()

        def submit() -> None:
            group = next(todo, None)
            if group is not None:
                pending.append((len(group), pool.submit(job, group)))

        for _ in range(2 * concurrency):  # a bounded window keeps memory flat on huge folders
            submit()
        try:
            while pending:
                n, fut = pending.popleft()
                results = fut.result()
                submit()
                if on_progress is not None:
                    on_progress(n)
                yield from results
        finally:
            for _, fut in pending:
                fut.cancel()


class Progress:
    """A one-line progress bar on stderr (files done, rate, ETA), redrawn at most 10 times a second.

    Hand-rolled on purpose: tqdm or rich would be the client's first dependency beyond httpx and pydantic."""

    def __init__(self, total: int, *, enabled: bool | None = None, stream: IO[str] | None = None,
                 label: str = "files") -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done, self.label = total, 0, label
        self._t0 = self._last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        bar = ("#" * int(24 * frac)).ljust(24)
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {self.label}  {rate:.1f}/s  ETA {eta:.0f}s ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


class ResultWriter:
    """Writes :class:`FileResult` s as ``table`` (aligned, printed at the end), ``csv`` or ``jsonl``
    (both streamed as results arrive), or ``json`` (one list at the end)."""

    CSV_HEADERS = ("image", "task", "version", "rank", "label", "prob", "server_ms", "error", "detail")

    def __init__(self, fmt: str, out: IO[str] | None = None) -> None:
        if fmt not in (*FORMATS, "json"):
            raise ValueError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
        self.fmt, self.out = fmt, out or sys.stdout
        self._rows: list[list[Any]] = []
        self._objects: list[dict[str, Any]] = []
        self._csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(self.CSV_HEADERS)
        self.errors = 0

    def write(self, r: FileResult) -> None:
        self.errors += r.error is not None
        if self.fmt == "jsonl":
            self.out.write(json.dumps(r.to_dict(), default=str) + "\n")
            self.out.flush()
        elif self.fmt == "json":
            self._objects.append(r.to_dict())
        elif self._csv is not None:
            p = r.prediction
            if p is None:
                self._csv.writerow([r.image, r.task_id, "", "", "", "", "", r.error, r.detail])
            for rank, lab in enumerate(p.predictions if p else [], 1):
                self._csv.writerow([r.image, p.task_id, p.version, rank, lab.label, f"{lab.prob:.6f}",
                                    f"{p.timings_ms.total:.1f}", "", ""])
            self.out.flush()
        elif r.prediction is not None:
            self._rows += prediction_rows(r.image, r.prediction)
        else:
            self._rows.append([r.image, r.task_id, None, None, f"error: {r.error}", None, None])

    def close(self) -> None:
        if self.fmt == "table":
            self.out.write(table(PREDICTION_HEADERS, self._rows) + "\n")
        elif self.fmt == "json":
            self.out.write(json.dumps(self._objects, indent=2, default=str) + "\n")
        self.out.flush()


def write_all(results: Iterable[FileResult], fmt: str, out: IO[str] | None = None) -> int:
    """Write ``results`` in ``fmt``; return how many were errors."""
    writer = ResultWriter(fmt, out)
    for r in results:
        writer.write(r)
    writer.close()
    return writer.errors


def render(results: Iterable[FileResult], fmt: str) -> str:
    """``results`` as the text :class:`ResultWriter` prints (tests compare the two CLIs with it)."""
    buf = io.StringIO()
    write_all(results, fmt, buf)
    return buf.getvalue()


__all__ += ["render", "write_all"]
