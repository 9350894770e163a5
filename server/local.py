"""Prediction without a server: the server's own decoding, preprocessing and executor, in process.

``nettailor predict --pack P PATH...`` runs on this, so its answers are the server's: the same
:func:`server.images.decode_image` checks, the same :class:`blockstore.Preprocess` steps, the same
:class:`server.executor.Executor` over the same :class:`PreparedTask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from blockstore import Backbone, NetTailorError, TaskPack

from .executor import Executor, PreparedTask
from .images import decode_image
from .inference import _preprocess, _top_k
from .schemas import Label

__all__ = ["LocalPredictor", "LocalResult"]


@dataclass(frozen=True)
class LocalResult:
    """One image's answer (``labels`` and ``logits``) or the domain error the server would have sent."""

    labels: list[Label] | None = None
    logits: Tensor | None = None
    error: NetTailorError | None = None


class LocalPredictor:
    def __init__(self, pack: TaskPack, backbone: Backbone, *, max_pixels: int = 16_000_000) -> None:
        self.task = PreparedTask.from_pack(pack, backbone, version=0)  # version 0: not from a store
        self.executor = Executor(backbone)
        self.max_pixels = max_pixels

    def predict(self, blobs: Sequence[bytes], top_k: int = 5) -> list[LocalResult]:
        """Decode, preprocess and run ``blobs`` as one executor batch; a bad image fails alone."""
        out: list[LocalResult | None] = [None] * len(blobs)
        xs: list[tuple[int, Tensor]] = []
        for i, blob in enumerate(blobs):
            try:
                xs.append((i, _preprocess(decode_image(blob, self.max_pixels), self.task.preprocess)))
            except NetTailorError as e:
                out[i] = LocalResult(error=e)
        if xs:
            logits = self.executor.run([(self.task, x) for _, x in xs])
            for (i, _), row in zip(xs, logits):
                out[i] = LocalResult(_top_k(row, self.task.labels, top_k), row)
        return out  # type: ignore[return-value]
