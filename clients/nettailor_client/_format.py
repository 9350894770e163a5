"""Plain-text tables for the CLI's human output (no dependency beyond the standard library)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from .models import Prediction, TaskDetail, TaskSummary

__all__ = ["prediction_rows", "table", "task_detail", "tasks_table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.2f}%"


def _when(t: float | str | None) -> str | None:
    if isinstance(t, (int, float)):
        return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return t


def prediction_rows(image: str, p: Prediction) -> list[list[Any]]:
    return [[image, p.task_id, p.version, rank, lab.label, f"{lab.prob:.4f}", f"{p.timings_ms.total:.1f}"]
            for rank, lab in enumerate(p.predictions, 1)]


PREDICTION_HEADERS = ("IMAGE", "TASK", "VERSION", "RANK", "LABEL", "PROB", "SERVER_MS")


def _task_row(t: TaskSummary) -> list[Any]:
    if t.status != "ok":  # registered but not servable: say so instead of the pack's figures
        return [t.task_id, t.version, "UNAVAILABLE", None, None, None, None, None, (t.detail or "")[:60]]
    return [t.task_id, t.version, t.pack_version, t.num_classes, f"{t.blocks_kept}/{t.blocks_total}",
            _count(t.task_params), _count(t.flops),
            f"{100 * t.flops / t.backbone_flops:.1f}%" if t.flops and t.backbone_flops else None, _pct(t.accuracy)]


def tasks_table(tasks: Sequence[TaskSummary]) -> str:
    rows = [_task_row(t) for t in tasks]
    return table(("TASK", "VERSION", "PACK", "CLASSES", "BLOCKS", "TASK_PARAMS", "FLOPS", "OF_BACKBONE",
                  "ACCURACY"), rows)


def task_detail(t: TaskDetail) -> str:
    fields = [
        ("task", t.task_id), ("version", t.version), ("pack version", t.pack_version), ("sha256", t.sha256),
        ("backbone", t.backbone_id), ("classes", t.num_classes),
        ("labels", ", ".join(t.labels[:20]) + (" ..." if len(t.labels) > 20 else "")),
        ("blocks kept", f"{t.blocks_kept}/{t.blocks_total}"),
        ("params", f"{_count(t.task_params)} task + {_count(t.shared_params)} shared"),
        ("flops", f"{_count(t.flops)} of {_count(t.backbone_flops)}"), ("accuracy", _pct(t.accuracy)),
        ("updated", _when(t.updated_at)),
    ]
    width = max(len(k) for k, _ in fields)
    out = [f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in fields]
    if t.history:
        hist = [[h.version, h.pack_version, h.sha256[:12], _when(h.registered_at),
                 "*" if h.version == t.version else ""] for h in t.history]
        out += ["", table(("VERSION", "PACK", "SHA256", "REGISTERED", "CURRENT"), hist)]
    return "\n".join(out)
