"""``nettailor inspect``: a pack's plan, parameters, FLOPs and metrics, as a table or as JSON."""

from __future__ import annotations

from blockstore import Backbone, TaskPack

from .export import cost_metrics
from .prune import alphas_of

__all__ = ["format_summary", "pack_summary"]


def pack_summary(pack: TaskPack, backbone: Backbone | None = None) -> dict:
    """Everything about ``pack``; with its ``backbone``, also the alphas and the exact cost."""
    layers = []
    alphas: dict[int, list[float]] = {}
    cost = None
    if backbone is not None:
        net = pack.build(backbone)
        alphas = alphas_of(net)
        cost = cost_metrics(pack.plan, backbone, len(pack.labels))
    for l, lp in enumerate(pack.plan.layers, start=1):
        paths = pack.plan.paths(l)
        a = alphas.get(l)
        layers.append({
            "layer": l, "block": lp.block, "proxies": [p.src for p in lp.proxies],
            "alphas": {("block" if s is None else f"proxy<{s}"): round(v, 4) for s, v in zip(paths, a)} if a else None,
        })
    return {
        "task_id": pack.task_id, "version": pack.version, "sha256": pack.sha256, "backbone_id": pack.backbone_id,
        "created_at": pack.created_at, "labels": pack.labels, "preprocess": pack.preprocess.__dict__,
        "task_bn": pack.plan.task_bn, "arch": pack.plan.arch, "task_tensor_bytes": pack.nbytes,
        "layers": layers, "cost": cost, "metrics": pack.metrics,
    }


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def format_summary(s: dict) -> str:
    lines = [
        f"task        {s['task_id']}  (version {s['version']}, {s['arch']}, created {s['created_at']})",
        f"sha256      {s['sha256']}",
        f"backbone    {s['backbone_id']}",
        f"labels      {len(s['labels'])}: {', '.join(s['labels'][:10])}{' ...' if len(s['labels']) > 10 else ''}",
        f"preprocess  {s['preprocess']}",
        f"task bytes  {s['task_tensor_bytes']:,}  (per-task BN statistics: {s['task_bn']})",
        "",
        "layer  block    proxies from        alphas",
    ]
    for r in s["layers"]:
        alphas = "  ".join(f"{k}={v:.3f}" for k, v in r["alphas"].items()) if r["alphas"] else "-"
        lines.append(f"{r['layer']:>5}  {'kept' if r['block'] else '-':<7}  "
                     f"{','.join(map(str, r['proxies'])) or '-':<18}  {alphas}")
    for title, d in (("cost (computed)", s["cost"]), ("metrics (recorded at export)", s["metrics"])):
        if d:
            lines += ["", title]
            lines += [f"  {k:<24} {_fmt(v)}" for k, v in sorted(d.items())]
    return "\n".join(lines)
