"""Inference core: images in, top-k labels out, through the pack cache and the batcher.

It raises domain errors only; the app maps them to HTTP once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from blockstore import InvalidTaskId, NetTailorError, NotFound, Preprocess, validate_task_id

from .batching import Batcher, RunResult
from .cache import Lease, PackCache
from .errors import BadImage, BadTensor, TooManyTasks
from .executor import PreparedTask
from .images import decode_image
from .logs import note_result
from .metrics import Metrics
from .schemas import BatchPrediction, Label, MultiPrediction, Prediction, Timings
from .versions import CURRENT, Pin, acquire

__all__ = ["Inference", "Inferred", "parse_task_list"]

_INLINE_DECODE_BYTES = 256 * 1024  # smaller uploads decode on the event loop; larger ones in a thread


def parse_task_list(tasks: str, limit: int) -> list[str]:
    ids = list(dict.fromkeys(t.strip() for t in tasks.split(",") if t.strip()))
    if not ids:
        raise TooManyTasks("name at least one task: ?tasks=a,b,c")
    if len(ids) > limit:
        raise TooManyTasks(f"{len(ids)} tasks in one request; the limit is {limit}")
    for t in ids:
        validate_task_id(t)
    return ids


def _softmax(logits: Tensor) -> np.ndarray:
    """A row of logits as class probabilities (float64), for every form of answer.  NumPy, not torch:
    this runs on the event loop, where each torch operator lets go of the GIL and waits for it again
    (see :func:`_preprocess`)."""
    z = logits.detach().cpu().numpy().astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    return p


def _top_k(logits: Tensor, labels: Sequence[str], k: int) -> list[Label]:
    """The ``k`` most probable labels, ties in index order."""
    p = _softmax(logits)
    idx = np.argsort(-p, kind="stable")[:k]
    # Built, not validated: the values are ints, strings and floats by construction (half the cost).
    return [Label.model_construct(index=i, label=labels[i], prob=v) for v, i in zip(p[idx].tolist(), idx.tolist())]


def _preprocess(img: Image.Image, pre: Preprocess) -> Tensor:
    """The image as the executor takes it: uint8 ``[C, size, size]``, normalised there a batch at a time
    (server.executor.Frame).  No torch operator runs here, on the event loop: each would let go of
    the GIL and wait for it again behind the batcher thread."""
    try:
        return pre.to_uint8(img)
    except (OSError, ValueError, TypeError) as e:  # exotic modes that cannot be converted
        raise BadImage(f"cannot convert the {img.mode} image: {e}") from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass(frozen=True)
class Inferred:
    """What :meth:`Inference.infer` answers: the version that ran and every class's probability."""

    task_id: str
    version: int
    pack_version: str
    labels: list[str]
    probs: Tensor  # CPU float32 [N, classes]


def _rows(x: Tensor, pre: Preprocess) -> list[Tensor]:
    """An already preprocessed float32 batch ``[N, C, size, size]`` as executor rows ``[3, size, size]``
    (C is 3, or 1 for a grey task, whose channel is replicated as :meth:`Preprocess.normalize` does)."""
    want = f"[N, 3, {pre.size}, {pre.size}]" + (f" or [N, 1, {pre.size}, {pre.size}]" if pre.channels == 1 else "")
    if x.dtype != torch.float32 or x.dim() != 4 or x.shape[2:] != (pre.size, pre.size) \
            or x.shape[1] not in {3, pre.channels} or x.shape[0] < 1:
        raise BadTensor(f"the input tensor is {str(x.dtype).removeprefix('torch.')}{list(x.shape)}; "
                        f"this task takes float32 {want}")
    if not bool(torch.isfinite(x).all()):
        raise BadTensor("the input tensor holds NaN or infinite values")
    return list(x.expand(-1, 3, -1, -1).unbind(0))


class Inference:
    def __init__(self, cache: PackCache, batcher: Batcher, metrics: Metrics, *, max_pixels: int,
                 max_tasks: int) -> None:
        self.cache, self.batcher, self.metrics = cache, batcher, metrics
        self.max_pixels, self.max_tasks = max_pixels, max_tasks

    async def _decode(self, blobs: Sequence[bytes]) -> list[Image.Image]:
        if sum(len(b) for b in blobs) <= _INLINE_DECODE_BYTES:
            return [decode_image(b, self.max_pixels) for b in blobs]
        return await anyio.to_thread.run_sync(lambda: [decode_image(b, self.max_pixels) for b in blobs])

    def _count(self, task_ids: Sequence[str], endpoint: str, outcome: str, known: bool, seconds: float) -> None:
        for tid in task_ids:
            # Unknown ids must not grow the label set; known ones are capped (Metrics.task_label).
            label = self.metrics.task_label(tid) if known else "-"
            self.metrics.requests.labels(label, endpoint, outcome).inc()
            if outcome == "ok":
                self.metrics.latency.labels(label, endpoint).observe(seconds)

    async def _lease(self, task_id: str, pin: Pin) -> Lease:
        """Version resolution: the current version, or the one ``pin`` names (server.versions)."""
        if pin.is_current:
            return await self.cache.acquire(task_id)
        return await acquire(self.cache, task_id, pin)

    async def _leases(self, task_ids: Sequence[str], pin: Pin = CURRENT) -> list[Lease]:
        leases: list[Lease] = []
        try:
            for tid in task_ids:
                leases.append(await self._lease(tid, pin))
        except BaseException:
            for lease in leases:
                lease.release()
            raise
        return leases

    async def _observed(self, task_ids: list[str], endpoint: str, t0: float, coro):  # type: ignore[no-untyped-def]
        try:
            result = await coro
        except NetTailorError as e:
            known = not isinstance(e, (NotFound, InvalidTaskId))
            self._count(task_ids, endpoint, e.code, known, 0.0)
            raise
        self._count(task_ids, endpoint, "ok", True, time.perf_counter() - t0)
        note_result(result)  # the version that answered, in the request's access log
        return result

    # -- the three forms ------------------------------------------------------------------

    async def predict(self, task_id: str, blob: bytes, top_k: int, t0: float, pin: Pin = CURRENT) -> Prediction:
        validate_task_id(task_id)
        return await self._observed([task_id], "predict", t0,
                                    self._predict(task_id, [blob], top_k, t0, False, pin))

    async def predict_batch(self, task_id: str, blobs: list[bytes], top_k: int, t0: float,
                            pin: Pin = CURRENT) -> BatchPrediction:
        validate_task_id(task_id)
        return await self._observed([task_id], "predict_batch", t0,
                                    self._predict(task_id, blobs, top_k, t0, True, pin))

    async def _predict(self, task_id: str, blobs: list[bytes], top_k: int, t0: float, batch: bool,  # type: ignore[no-untyped-def]
                       pin: Pin = CURRENT):
        imgs = await self._decode(blobs)
        (lease,) = await self._leases([task_id], pin)
        with lease:
            task = lease.task
            xs = [_preprocess(img, task.preprocess) for img in imgs]
            t_dec = time.perf_counter()
            out = await self.batcher.run([(task, x) for x in xs])
            timings = self._timings(t0, t_dec, out)
            if batch:
                return BatchPrediction(task_id=task_id, version=task.version, pack_version=task.pack_version,
                                       results=[_top_k(r.logits, task.labels, top_k) for r in out],
                                       timings_ms=timings)
            return Prediction(task_id=task_id, version=task.version, pack_version=task.pack_version,
                              predictions=_top_k(out[0].logits, task.labels, top_k), timings_ms=timings)

    async def predict_multi(self, tasks: str, blob: bytes, top_k: int, t0: float,
                            pin: Pin = CURRENT) -> MultiPrediction:
        ids = parse_task_list(tasks, self.max_tasks)
        return await self._observed(ids, "predict_multi", t0, self._predict_multi(ids, blob, top_k, t0, pin))

    async def _predict_multi(self, ids: list[str], blob: bytes, top_k: int, t0: float,
                             pin: Pin = CURRENT) -> MultiPrediction:
        (img,) = await self._decode([blob])
        leases = await self._leases(ids, pin)
        try:
            groups: dict[Preprocess, list[PreparedTask]] = {}
            for lease in leases:
                groups.setdefault(lease.task.preprocess, []).append(lease.task)
            # Usually one group: tasks tailored from one backbone share preprocessing.  Every group is one
            # frame, and all of them join the same micro-batches as single-task requests.
            inputs = [(_preprocess(img, pre), tasks) for pre, tasks in groups.items()]
            t_dec = time.perf_counter()
            results: dict[str, tuple[PreparedTask, RunResult]] = {}
            for (_, tasks), out in zip(inputs, await self.batcher.run_frames(inputs)):
                for t, r in zip(tasks, out):
                    results[t.task_id] = (t, r)
            timings = self._timings(t0, t_dec, [r for _, r in results.values()])
            return MultiPrediction(results={
                tid: Prediction(task_id=tid, version=t.version, pack_version=t.pack_version,
                                predictions=_top_k(r.logits, t.labels, top_k),
                                timings_ms=Timings(decode=timings.decode, queue=_ms(r.queue_s),
                                                   infer=_ms(r.infer_s), total=timings.total))
                for tid, (t, r) in ((tid, results[tid]) for tid in ids)
            }, timings_ms=timings)
        finally:
            for lease in leases:
                lease.release()

    # -- raw probabilities (the Open Inference Protocol) --------------------------------------

    async def infer(self, task_id: str, t0: float, *, images: list[bytes] | None = None,
                    tensor: Tensor | None = None, pin: Pin = CURRENT) -> Inferred:
        """Every class's probability for encoded ``images``, or for a ``tensor`` already preprocessed
        as the task's pack says; the same decoding, preprocessing and batcher as the forms above."""
        validate_task_id(task_id)
        return await self._observed([task_id], "infer", t0, self._infer(task_id, images, tensor, pin))

    async def _infer(self, task_id: str, images: list[bytes] | None, tensor: Tensor | None, pin: Pin) -> Inferred:
        imgs = await self._decode(images) if images is not None else None
        (lease,) = await self._leases([task_id], pin)
        with lease:
            task = lease.task
            if imgs is not None:
                xs = [_preprocess(img, task.preprocess) for img in imgs]
            else:
                assert tensor is not None
                xs = _rows(tensor, task.preprocess)
            out = await self.batcher.run([(task, x) for x in xs])
            probs = torch.from_numpy(np.stack([_softmax(r.logits) for r in out]).astype(np.float32))
            return Inferred(task.task_id, task.version, task.pack_version, task.labels, probs)

    @staticmethod
    def _timings(t0: float, t_dec: float, out: Sequence[RunResult]) -> Timings:
        now = time.perf_counter()
        return Timings(decode=_ms(t_dec - t0), queue=_ms(max(r.queue_s for r in out)),
                       infer=_ms(max(r.infer_s for r in out)), total=_ms(now - t0))
